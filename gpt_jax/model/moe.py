"""A sparse mixture of experts (Mixtral) in place of the MLP: a router scores the E experts for each token, the k most
probable run (each a SwiGLU MLP), and their outputs are summed with the router's probabilities renormalised over the
k chosen.

Each expert's kernels are weights of their own (not slices of one stacked array), and the same math runs one of two
ways, chosen from the shapes at trace time, so each compiled program has one:
  - few tokens (M * k < E, e.g. decoding one to three rows of Mixtral): each (token, expert) pair is a
    `lax.switch` over the experts, which runs only the chosen branch, so a step reads k experts' weights per token,
    not all E. Decoding at small batch is bound by the bytes read; this makes a Mixtral step cost what a dense
    model of its active size costs.
  - more tokens (prefill, larger batches): every expert runs on every token and its output is weighted by the
    token's routing weight (0 where not chosen). Every expert is read once, but the work is E/k times what the
    chosen experts need (4x for Mixtral's 8 and 2). A grouped product (`jax.lax.ragged_dot`) would compute only
    the chosen pairs on TPU/GPU; XLA:CPU runs it slower than this (docs/BENCHMARKS.md), so it is not used.
Expert kernels are projection kernels like any other: sharded over the model axis by their MLP width and quantized
by `quantize_int8`. The router stays in floating point.

Axes: B batch, T query length, M = B*T tokens, D model width, F expert MLP width, E experts, K chosen per token.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.model.config import ModelConfig
from gpt_jax.model.layers import EMBED, EXPERT, MLP_WIDTH, activation, init_weight, weight
from gpt_jax.model.quantize import contract
from gpt_jax.model.row_invariant import ForwardMode


class ExpertWeights(nn.Module):
    """One expert's SwiGLU kernels: gate and up [D, F], down [F, D]."""

    config: ModelConfig

    @nn.compact
    def __call__(self) -> tuple:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d, f = cfg.d_model, cfg.mlp_dim
        out_init = nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layers))
        return (
            weight(self, "gate_kernel", init_weight, (d, f), dtype, (EMBED, MLP_WIDTH), 1),
            weight(self, "up_kernel", init_weight, (d, f), dtype, (EMBED, MLP_WIDTH), 1),
            weight(self, "down_kernel", out_init, (f, d), dtype, (MLP_WIDTH, EMBED), 1),
        )


class SparseMoE(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mode: ForwardMode) -> jax.Array:  # [B, T, D] -> [B, T, D]
        del mode  # the experts' arithmetic is the same in every mode (not row-invariant: README, "exceptions")
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        e, k, d = cfg.n_experts, cfg.experts_per_token, cfg.d_model
        router = weight(self, "router", init_weight, (d, e), dtype, (EMBED, EXPERT))  # [D, E]
        experts = [ExpertWeights(cfg, name=f"expert_{i}")() for i in range(e)]
        b, t, _ = x.shape
        tokens = x.reshape(b * t, d)  # [M, D]
        scores = jnp.einsum("MD,DE->ME", tokens, router)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)  # [M, E]
        chosen_probs, chosen = jax.lax.top_k(probs, k)  # [M, K]
        chosen_probs = chosen_probs / jnp.sum(chosen_probs, axis=-1, keepdims=True)
        act = activation(cfg.activation)

        def run(i: int, rows: jax.Array) -> jax.Array:  # expert i on rows [R, D] -> [R, D]
            gate, up, down = experts[i]
            hidden = act(contract("RD,DF->RF", rows, gate)) * contract("RD,DF->RF", rows, up)
            return contract("RF,FD->RD", hidden, down)

        if b * t * k < e:  # each chosen pair through its own expert only
            branches = [lambda rows, i=i: run(i, rows) for i in range(e)]
            out = jnp.zeros_like(tokens)
            for m in range(b * t):
                for j in range(k):
                    y = jax.lax.switch(chosen[m, j], branches, tokens[m : m + 1])  # [1, D]
                    out = out.at[m].add((chosen_probs[m, j] * y[0]).astype(out.dtype))
        else:  # every expert on every token, weighted by the routing (0 where not chosen)
            routing = jnp.zeros((b * t, e), jnp.float32).at[jnp.arange(b * t)[:, None], chosen].add(chosen_probs)
            out = sum((routing[:, i : i + 1] * run(i, tokens)).astype(tokens.dtype) for i in range(e))
        return out.reshape(b, t, d).astype(x.dtype)
