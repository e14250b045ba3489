"""What a speculative proposer is: the one interface verification (`verify.py`) calls, whatever proposes.

A proposer is a static setting of a compiled program (hashable; equal proposers share a program). Its data that may
change between calls (a draft model's weights, a benchmark's reference tokens) is returned by `traced` and reaches
every call as `extra`, so new values compile nothing. Its state across steps (a draft model's cache) is a pytree
that `start` makes after the prefill and `propose` carries on.

Axes: B batch, k proposals per step.
"""

from __future__ import annotations

import abc
from typing import Any

import jax

from gpt_jax.errors import InputError, check

MAX_PROPOSED = 16  # k at most: a verification pass feeds k + 1 positions


def check_count(name: str, value, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high
    check(ok, InputError, f"{name} must be an integer in [1, {high}], got {value!r}")


class Proposer(abc.ABC):
    """Proposes up to `num_tokens` tokens per row and step; verification keeps the ones the sampler itself chooses."""

    num_tokens: int

    def check_target(self, config, tokenizer) -> None:
        """Refuse (InputError) a target model this proposer cannot serve; called before anything compiles."""
        del config, tokenizer  # most proposers serve any target

    def traced(self, config) -> dict[str, Any]:
        """The proposer's traced data for one call (arrays and numbers), passed to `start` and `propose`."""
        return {}

    def start(self, inputs, cache_length: int, extra: dict) -> Any:
        """The proposer's state once the prompt is prefilled (a pytree; None when it keeps none)."""
        return None

    @abc.abstractmethod
    def propose(self, spec, inputs, extra: dict) -> tuple[jax.Array, Any]:
        """Proposals [B, k] (-1 where a row has none) to follow each row's last token, and the proposer's new state.

        `spec` is the speculative state (`verify.SpecState`): `spec.decode` the plain decode state,
        `spec.proposer_state` this proposer's state."""

    def follow(self, spec) -> Any:
        """The proposer's state after a verification pass emitted tokens (default: as it was)."""
        return spec.proposer_state
