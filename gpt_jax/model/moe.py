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

In a decode step or verification pass (`ForwardMode.row_invariant`) the router's and the experts' products are
row-invariant (row_invariant.py), its softmax and renormalisation are fixed-order sums, and a token's chosen outputs
are picked (exact selects) and summed by one chain of multiply-adds in expert order on both paths, so a row's output
does not depend on its batch-mates or on which path their number picks. A prefill keeps the zero-weighted sum over
all experts, which never holds more than one expert's output.

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
from gpt_jax.model.row_invariant import ForwardMode, row_sum, softmax


def pick(outputs: list, chosen: jax.Array) -> jax.Array:
    """outputs: E arrays [M, D], chosen [M, 1] -> [M, D]: each token's row of the chosen expert's output."""
    out = outputs[0]
    for i, y in enumerate(outputs[1:], start=1):
        out = jnp.where(chosen == i, y, out)
    return out


def weighted_sum(weights: jax.Array, picked: list, dtype) -> jax.Array:
    """weights [M, K], picked: K arrays [M, D] -> [M, D]: the same chain of multiply-adds, in the same order, on
    every path (XLA:CPU fuses a multiply and an add into one fused multiply-add, so another expression for the same
    sum, such as adding zero-weighted experts in between, rounds otherwise)."""
    out = jnp.zeros(picked[0].shape, dtype)
    for j, y in enumerate(picked):
        out = out + (weights[:, j : j + 1] * y).astype(dtype)
    return out


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
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        e, k, d = cfg.n_experts, cfg.experts_per_token, cfg.d_model
        invariant = mode.row_invariant
        router = weight(self, "router", init_weight, (d, e), dtype, (EMBED, EXPERT))  # [D, E]
        experts = [ExpertWeights(cfg, name=f"expert_{i}")() for i in range(e)]
        b, t, _ = x.shape
        tokens = x.reshape(b * t, d)  # [M, D]
        scores = contract("BTD,DE->BTE", x, router, invariant=invariant).reshape(b * t, e)
        probs = softmax(scores.astype(jnp.float32)) if invariant else jax.nn.softmax(scores.astype(jnp.float32))
        chosen_probs, chosen = jax.lax.top_k(probs, k)  # [M, K]
        # in expert order, so both paths below add a token's k outputs in one order
        order = jnp.argsort(chosen, axis=-1)
        chosen, chosen_probs = (jnp.take_along_axis(a, order, axis=-1) for a in (chosen, chosen_probs))
        total = row_sum(chosen_probs, keepdims=True) if invariant else jnp.sum(chosen_probs, axis=-1, keepdims=True)
        chosen_probs = chosen_probs / total
        act = activation(cfg.activation)

        def run(i: int, rows: jax.Array) -> jax.Array:  # expert i on rows [R, D] -> [R, D]
            gate, up, down = experts[i]
            rows = rows[:, None]  # [R, 1, D]: each row a decode row of its own to the row-invariant products
            hidden = act(contract("RTD,DF->RTF", rows, gate, invariant=invariant))
            hidden = hidden * contract("RTD,DF->RTF", rows, up, invariant=invariant)
            return contract("RTF,FD->RTD", hidden, down, invariant=invariant)[:, 0]

        if b * t * k < e:  # each chosen pair through its own expert only
            branches = [lambda rows, i=i: run(i, rows) for i in range(e)]
            picked = [
                jnp.concatenate([jax.lax.switch(chosen[m, j], branches, tokens[m : m + 1]) for m in range(b * t)])
                for j in range(k)
            ]  # k arrays [M, D]: each token's j-th chosen expert's output
            out = weighted_sum(chosen_probs, picked, tokens.dtype)
        elif invariant:  # every expert on every token, each token's k outputs picked (exact selects) and summed
            ys = [run(i, tokens) for i in range(e)]
            picked = [pick(ys, chosen[:, j : j + 1]) for j in range(k)]
            out = weighted_sum(chosen_probs, picked, tokens.dtype)
        else:  # every expert on every token, weighted by the routing (0 where not chosen)
            routing = jnp.zeros((b * t, e), jnp.float32).at[jnp.arange(b * t)[:, None], chosen].add(chosen_probs)
            out = sum((routing[:, i : i + 1] * run(i, tokens)).astype(tokens.dtype) for i in range(e))
        return out.reshape(b, t, d).astype(x.dtype)
