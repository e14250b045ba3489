"""The engine's options, checked before anything compiles: slots, queue, context, prefill chunk, prefix-cache
budget, prefill grouping, and whether the slots fit in memory."""

from __future__ import annotations

from gpt_jax.decoding.batching import bucket
from gpt_jax.decoding.memory import check_serving_memory
from gpt_jax.errors import InputError, check
from gpt_jax.serving.constraint_pool import table_bytes

MAX_SLOTS = 1024
PREFILL_TOGETHER = 16  # short prompts per prefill pass, at most (measured: docs/BENCHMARKS.md)


def check_room(prompt_len: int, budget: int, max_len: int, scoring: bool) -> None:
    """A prompt and its budget must fit a slot's `max_len` tokens (a prompt only scored takes no budget)."""
    check(
        prompt_len <= max_len,
        InputError,
        f"the prompt has {prompt_len} tokens, more than the server's context of {max_len} tokens",
    )
    check(
        scoring or prompt_len + budget <= max_len,
        InputError,
        f"the prompt has {prompt_len} tokens; with max_new_tokens={budget} that is {prompt_len + budget}, more "
        f"than the server's context of {max_len} tokens",
    )


def check_budget(prefix_cache_gb) -> None:
    check(
        isinstance(prefix_cache_gb, (int, float)) and not isinstance(prefix_cache_gb, bool) and prefix_cache_gb >= 0,
        InputError,
        f"prefix_cache_gb must be a number >= 0 (0: no prefix cache), got {prefix_cache_gb!r}",
    )


def check_slots(slots_count) -> None:
    check(
        isinstance(slots_count, int) and not isinstance(slots_count, bool) and 1 <= slots_count <= MAX_SLOTS,
        InputError,
        f"slots must be an integer in [1, {MAX_SLOTS}], got {slots_count!r}",
    )


def default_chunk(max_len: int) -> int:
    """A quarter of the slots' context, 16 to 256 tokens: a long prompt's prefill passes are large enough to run
    at speed and small enough that the prefix cache's blocks share the prompts' common starts."""
    return min(256, max(16, bucket(max_len) // 4))


def check_options(
    gen, data_rows: int, slots_count, max_queue, chunk, steps_per_dispatch, max_len, prefix_cache_gb, states, together
):
    """Refuse bad engine options (InputError naming each); returns max_len and chunk with defaults filled in, and
    the prefix cache's budget in bytes."""
    check_budget(prefix_cache_gb)
    cache_bytes = int(prefix_cache_gb * 2**30)
    check_slots(slots_count)
    check(
        isinstance(together, int) and not isinstance(together, bool) and together >= 1,
        InputError,
        f"prefill_together must be an integer >= 1 (1: one prompt per prefill pass), got {together!r}",
    )
    check(
        slots_count % data_rows == 0,
        InputError,
        f"slots ({slots_count}) must be a multiple of the mesh's data axis ({data_rows})",
    )
    check(isinstance(max_queue, int) and max_queue >= 0, InputError, f"max_queue must be >= 0, got {max_queue!r}")
    check(
        isinstance(steps_per_dispatch, int) and steps_per_dispatch >= 1,
        InputError,
        f"steps_per_dispatch must be an integer >= 1, got {steps_per_dispatch!r}",
    )
    context = gen.config.max_seq_len
    length = min(context, 4096) if max_len is None else max_len
    check(
        isinstance(length, int) and 2 <= length <= context,
        InputError,
        f"max_len must be an integer in [2, {context}], got {max_len!r}",
    )
    chunk = default_chunk(length) if chunk is None else chunk
    check(
        isinstance(chunk, int) and chunk >= 16 and bucket(chunk) == chunk,
        InputError,
        f"chunk must be a power of two >= 16, got {chunk!r}",
    )
    table = table_bytes(gen.config.vocab_size, states)
    check_serving_memory(gen.config, slots_count, length, chunk, data_rows, gen.mesh, cache_bytes, table)
    return length, chunk, cache_bytes
