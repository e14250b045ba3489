"""Prompt lookup: propose what followed the latest earlier occurrence of a row's last n tokens, no second model.

Axes: B batch, N = T + M a row's text (prompt then output), k proposals.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gpt_jax.decoding.speculation.proposer import MAX_PROPOSED, Proposer, check_count


@dataclasses.dataclass(frozen=True)
class PromptLookup(Proposer):
    """Propose the `num_tokens` tokens that followed the latest earlier match of the last n tokens (n from
    `max_ngram` down to 1) in the row's prompt and output, continued periodically where they reach the row's end
    (so a run of repeats proposes k tokens)."""

    num_tokens: int = 4
    max_ngram: int = 3

    def __post_init__(self):
        check_count("num_tokens", self.num_tokens, MAX_PROPOSED)
        check_count("max_ngram", self.max_ngram, 8)

    def propose(self, spec, inputs, extra):
        state = spec.decode
        tokens = jnp.concatenate([inputs.tokens, state.tokens], axis=1)  # [B, N]
        end = inputs.tokens.shape[1] + state.rows.lengths
        return lookup(tokens, end, inputs.pad_len, self.num_tokens, self.max_ngram), spec.proposer_state


def lookup(tokens: jax.Array, end: jax.Array, pad_len: jax.Array, k: int, max_ngram: int) -> jax.Array:
    """[B, k] proposals, -1 where none. tokens [B, N] hold each row's text in pad_len..end-1."""
    b, n = tokens.shape
    follow = jnp.full((b,), -1, jnp.int32)  # where the continuation starts
    for g in range(max_ngram, 0, -1):
        tail = jnp.take_along_axis(tokens, jnp.clip(end[:, None] - g + jnp.arange(g), 0, n - 1), axis=1)  # [B, g]
        starts = jnp.arange(n - g + 1)
        equal = jnp.ones((b, n - g + 1), bool)
        for i in range(g):
            equal &= tokens[:, i : n - g + 1 + i] == tail[:, i : i + 1]
        valid = equal & (starts[None, :] >= pad_len[:, None]) & (starts[None, :] + g < end[:, None])
        valid &= (end - g >= pad_len)[:, None]  # the row has g tokens at all
        latest = jnp.max(jnp.where(valid, starts[None, :], -1), axis=1)
        follow = jnp.where((follow < 0) & (latest >= 0), latest + g, follow)
    # past the row's end the continuation repeats with the period it implies (a run of repeats proposes k tokens)
    period = jnp.maximum(end - follow, 1)[:, None]
    at = follow[:, None] + jnp.arange(k)[None, :] % period
    return jnp.where(follow[:, None] >= 0, jnp.take_along_axis(tokens, jnp.clip(at, 0, n - 1), axis=1), -1)
