"""A sparse mixture of experts (Mixtral) in place of the MLP: a router scores the E experts for each token, the k most
probable run (each a SwiGLU MLP), and their outputs are summed with the router's probabilities renormalised over the
k chosen.

The same math runs one of two ways, chosen from the shapes at trace time (so each compiled program has one):
  - few tokens (M * k < E, e.g. decoding one or a few rows): the chosen experts' weights are gathered per token, so
    a step reads k experts' weights per token, not all E. Decoding at small batch is bound by the bytes read, and
    this is what makes a Mixtral step cost about k/E of a dense model of its size.
  - many tokens (prefill, large batches): the (token, expert) pairs are sorted by expert and each projection is one
    grouped product (`jax.lax.ragged_dot`) that reads every expert once and computes only the chosen pairs on
    backends with a grouped kernel (TPU, GPU). XLA:CPU lowers it to about the cost of running every expert on every
    token (measured in docs/BENCHMARKS.md).
Expert kernels stay in floating point under `quantize_int8` (its per-channel scheme covers leading-input kernels).

Axes: B batch, T query length, M = B*T tokens, D model width, F expert MLP width, E experts, K chosen experts.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.config import ModelConfig
from gpt_jax.layers import EMBED, EXPERT, MLP_WIDTH, activation, init_weight, weight


class SparseMoE(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        e, k, d, f = cfg.n_experts, cfg.experts_per_token, cfg.d_model, cfg.mlp_dim
        out_init = nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layers))
        router = weight(self, "router", init_weight, (d, e), dtype, (EMBED, EXPERT))  # [D, E]
        kernels = (
            weight(self, "gate_kernel", init_weight, (e, d, f), dtype, (EXPERT, EMBED, MLP_WIDTH)),  # [E, D, F]
            weight(self, "up_kernel", init_weight, (e, d, f), dtype, (EXPERT, EMBED, MLP_WIDTH)),  # [E, D, F]
            weight(self, "down_kernel", out_init, (e, f, d), dtype, (EXPERT, MLP_WIDTH, EMBED)),  # [E, F, D]
        )
        b, t, _ = x.shape
        tokens = x.reshape(b * t, d)  # [M, D]
        scores = jnp.einsum("MD,DE->ME", tokens, router)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)  # [M, E]
        chosen_probs, chosen = jax.lax.top_k(probs, k)  # [M, K]
        chosen_probs = chosen_probs / jnp.sum(chosen_probs, axis=-1, keepdims=True)
        run = _gathered if b * t * k < e else _grouped
        out = run(tokens, chosen, chosen_probs, kernels, activation(cfg.activation))
        return out.reshape(b, t, d).astype(x.dtype)


def _gathered(tokens, chosen, chosen_probs, kernels, act) -> jax.Array:
    """Each token through its own k experts' weights, gathered: [M, D] -> [M, D]."""
    gate, up, down = (w[chosen] for w in kernels)  # [M, K, D, F], [M, K, D, F], [M, K, F, D]
    hidden = act(jnp.einsum("MD,MKDF->MKF", tokens, gate)) * jnp.einsum("MD,MKDF->MKF", tokens, up)
    out = jnp.einsum("MKF,MKFD->MKD", hidden, down)
    return jnp.einsum("MKD,MK->MD", out, chosen_probs.astype(out.dtype))


def _grouped(tokens, chosen, chosen_probs, kernels, act) -> jax.Array:
    """The (token, expert) pairs sorted by expert, one grouped product per projection: [M, D] -> [M, D]."""
    gate, up, down = kernels
    m, k = chosen.shape
    order = jnp.argsort(chosen.reshape(-1), stable=True)  # [M*K] pairs, grouped by expert
    token_of = order // k
    group_sizes = jnp.bincount(chosen.reshape(-1), length=gate.shape[0]).astype(jnp.int32)  # [E]
    xs = tokens[token_of]  # [M*K, D]
    hidden = act(jax.lax.ragged_dot(xs, gate, group_sizes)) * jax.lax.ragged_dot(xs, up, group_sizes)
    out = jax.lax.ragged_dot(hidden, down, group_sizes)  # [M*K, D]
    out = out * chosen_probs.reshape(-1)[order][:, None].astype(out.dtype)
    return jnp.zeros((m, tokens.shape[1]), out.dtype).at[token_of].add(out)
