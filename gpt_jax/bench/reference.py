"""The speculative benchmark's probe: a proposer of given tokens, each made wrong with a chosen probability, so the
benchmark can time verification at any acceptance rate (`gpt-jax bench --speculative`, part "ceiling").

Axes: B batch (the call's bucketed rows), M output buffer, k proposals.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gpt_jax.decoding.speculation.proposer import MAX_PROPOSED, Proposer, check_count
from gpt_jax.errors import InputError, check


@dataclasses.dataclass(frozen=True, eq=False)
class Reference(Proposer):
    """Propose given tokens (`tokens` [B, M]: row b's t-th output at [b, t]; B the call's bucketed rows), each
    replaced by a wrong one with probability 1 - accuracy, drawn from `seed`. Tokens, accuracy and seed are traced:
    references with the same k share one compiled program."""

    tokens: Any
    num_tokens: int = 4
    accuracy: float = 1.0
    seed: int = 0

    def __eq__(self, other):
        return isinstance(other, Reference) and other.num_tokens == self.num_tokens

    def __hash__(self):
        return hash(("reference", self.num_tokens))

    def __post_init__(self):
        check_count("num_tokens", self.num_tokens, MAX_PROPOSED)
        check(0.0 <= self.accuracy <= 1.0, InputError, f"accuracy must be in [0, 1], got {self.accuracy!r}")

    def traced(self, config):
        return {"reference": self.tokens, "key_seed": self.seed, "accuracy": self.accuracy, "vocab": config.vocab_size}

    def propose(self, spec, inputs, extra):
        return reference_proposals(spec.decode, self.num_tokens, extra), spec.proposer_state


def reference_proposals(state, k: int, extra: dict) -> jax.Array:
    """The reference's next k tokens per row [B, k], each wrong with probability 1 - accuracy."""
    ref = extra["reference"]  # [B, M]
    b, m = ref.shape
    at = state.rows.lengths[:, None] + jnp.arange(k)[None, :]  # [B, k]
    right = jnp.take_along_axis(ref, jnp.clip(at, 0, m - 1), axis=1)
    lengths = state.rows.lengths
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(extra["key_seed"]), lengths)  # per row, step
    keys = jax.vmap(jax.random.fold_in)(keys, jnp.arange(b))
    draws = jax.vmap(lambda key: jax.random.uniform(key, (k, 2)))(keys)  # [B, k, 2]
    wrong = (right + 1 + (draws[..., 1] * 1000).astype(jnp.int32)) % extra["vocab"]
    wrong = jnp.where(wrong == right, (right + 1) % extra["vocab"], wrong)
    return jnp.where(at < m, jnp.where(draws[..., 0] < extra["accuracy"], right, wrong), -1)
