"""A draft model: a smaller model with the target's vocabulary runs k steps ahead with its own cache, drawing with
the target's per-position keys and sampling settings (no penalties), so where the two distributions agree their
draws coincide.

Axes: B batch, k proposals.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gpt_jax.decoding import loop
from gpt_jax.decoding.sampling import sample, step_keys
from gpt_jax.decoding.speculation.proposer import MAX_PROPOSED, Proposer, check_count
from gpt_jax.errors import InputError, check
from gpt_jax.model.kv_cache import KVCache
from gpt_jax.model.row_invariant import ForwardMode


@dataclasses.dataclass(frozen=True, eq=False)
class DraftModel(Proposer):
    """A `Generator` with the target's vocabulary drafts `num_tokens` tokens per step.

    Equal when they hold the same generator object and k: the compiled program is keyed by that (and holds it)."""

    generator: Any
    num_tokens: int = 4

    def __eq__(self, other):
        same = isinstance(other, DraftModel) and other.generator is self.generator
        return same and other.num_tokens == self.num_tokens

    def __hash__(self):
        return hash((id(self.generator), self.num_tokens))

    def __post_init__(self):
        check_count("num_tokens", self.num_tokens, MAX_PROPOSED)
        check(
            hasattr(self.generator, "programs") and hasattr(self.generator, "config"),
            InputError,
            f"DraftModel needs a gpt_jax.Generator, got {type(self.generator).__name__}",
        )

    def check_target(self, config, tokenizer) -> None:
        """A draft must share the target's vocabulary: same size and, where both have tokenizers, the same tokens."""
        other = self.generator
        check(
            other.config.vocab_size == config.vocab_size,
            InputError,
            f"the draft model's vocabulary ({other.config.vocab_size} ids) differs from the model's "
            f"({config.vocab_size}): a draft must share the tokenizer",
        )
        if tokenizer is not None and other.tokenizer is not None:
            same = all(tokenizer.token_bytes(i) == other.tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size))
            check(same, InputError, "the draft model's tokenizer maps ids to other tokens: a draft must share it")

    def traced(self, config):
        return {"draft_params": self.generator.params}

    def start(self, inputs, cache_length, extra) -> KVCache:
        """The prompt through the draft model (its logits unused: the target chose the first token)."""
        programs = self.generator.programs
        cache = programs.new_cache(inputs.tokens.shape[0], cache_length)
        _, cache = loop.prefill(programs.logits_fn, extra["draft_params"], inputs, cache)
        return cache.replace(index=jnp.full((inputs.tokens.shape[0],), cache.index, jnp.int32))

    def propose(self, spec, inputs, extra) -> tuple[jax.Array, KVCache]:
        """k tokens: the draft first takes in the token before `last` and `last` (so its cache holds every emitted
        token, whatever was accepted), then draws k times with the target's keys and sampling."""
        state, cache = spec.decode, spec.proposer_state
        logits_fn = self.generator.programs.logits_fn
        previous = jnp.take_along_axis(state.tokens, jnp.maximum(state.rows.lengths - 2, 0)[:, None], axis=1)[:, 0]
        before = jnp.where(state.rows.lengths >= 2, previous, inputs.tokens[:, -1])  # the prompt's last, at first
        fed = jnp.stack([before, state.rows.last], axis=1)  # [B, 2] at slots index-1, index
        cache = cache.replace(index=state.cache.index - 1)
        proposals = []
        for j in range(self.num_tokens):
            logits, cache = loop.feed(logits_fn, extra["draft_params"], fed, inputs.pad_len, cache, ForwardMode.DECODE)
            token, _ = sample(step_keys(state.rows.keys, state.rows.lengths + j), logits[:, -1], inputs.rules.sampling)
            proposals.append(token)
            fed = token[:, None]
        return jnp.stack(proposals, axis=1), cache

    def follow(self, spec) -> KVCache:
        """The draft's cache follows the rows' emitted tokens."""
        return spec.proposer_state.replace(index=spec.decode.cache.index)
