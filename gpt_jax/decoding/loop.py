"""Steps 7 and 8: append each chosen token and stop per row, inside one `jax.lax.while_loop`.

    prefill (whole prompt, one forward pass) -> while any row runs: choose a token from the carried logits,
    append it, and (unless every row is now done) feed it through the model for the next logits

Choosing and appending are `rows.choose` and `rows.advance`, the same functions speculation and the serving slots
call. The model enters as a callback `logits_fn(params, tokens, positions, mask, cache, mode) -> (logits, cache)`,
so the loop can be tested with a fake model. The same `start` and `decode_step` serve the while loop and streaming.

Axes: B batch, T prompt length (bucketed), S cache slots, M output buffer, V vocabulary, k recorded alternatives.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax.decoding import penalties
from gpt_jax.decoding.rows import LENGTH, Rows, Rules, advance, choose, top_alternatives
from gpt_jax.model.kv_cache import KVCache, cached_positions_and_mask
from gpt_jax.model.row_invariant import ForwardMode

LogitsFn = Callable[..., tuple[jax.Array, KVCache]]


@flax.struct.dataclass
class DecodeInputs:
    """Per-call traced values: changing any of them never recompiles."""

    tokens: jax.Array  # [B, T] left-padded prompts
    pad_len: jax.Array  # [B] leading padding slots of each row
    seed: jax.Array  # uint32 scalar
    row_seeds: jax.Array  # [B] row r samples with fold_in(key(seed), row_seeds[r])
    active: jax.Array  # [B] False for bucket filler rows
    rules: Rules  # sampling, penalties, budgets (<= M), EOS ids, stop sequences, pad id


@flax.struct.dataclass
class DecodeState:
    step: jax.Array  # scalar: forward passes after the prefill (plain decoding: tokens generated so far)
    tokens: jax.Array  # [B, M] output buffer, pad where nothing was generated
    logprobs: jax.Array  # [B, M] log-probability of each generated token (0 on pad)
    top_ids: jax.Array  # [B, M, k] the k most likely ids at each step (k = 0: not recorded)
    top_logprobs: jax.Array  # [B, M, k] their log-probabilities
    logits: jax.Array  # [B, V] fp32 logits the next token is chosen from
    rows: Rows  # each row's length, last token, stop state, keys and counts
    cache: KVCache


def feed(logits_fn: LogitsFn, params, tokens, pad_len, cache: KVCache, mode: ForwardMode, last_only=False):
    """tokens [B, T] written at the cache's index (one for all rows, or [B] per row) of rows left-padded by
    `pad_len` [B]: their logits [B, T, V] ([B, 1, V] with `last_only`) and the cache. The one place positions and
    masks are made for a pass."""
    positions, mask = cached_positions_and_mask(cache.index, pad_len, tokens.shape[1], cache.attended)
    if last_only:
        return logits_fn(params, tokens, positions, mask, cache, mode, last_only=True)
    return logits_fn(params, tokens, positions, mask, cache, mode)


def prefill(logits_fn: LogitsFn, params, inputs: DecodeInputs, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Run the whole left-padded prompt [B, T] through the model; return the last column's logits [B, V] (the
    head runs on that column only)."""
    logits, cache = feed(logits_fn, params, inputs.tokens, inputs.pad_len, cache, ForwardMode.PREFILL, True)
    return logits[:, -1], cache


def append(state: DecodeState, token, logprob, raw_logits, rules: Rules, take) -> DecodeState:
    """Write `token` [B] (its log-probability and, if recorded, the alternatives under `raw_logits` [B, V]) at each
    row's own position where `take` [B], and advance the rows (`rows.advance`)."""
    rows, buffer = state.rows, state.tokens.shape[1]
    index, slot = jnp.arange(token.shape[0]), jnp.where(take, rows.lengths, buffer)  # out of range: dropped
    updates = {
        "tokens": state.tokens.at[index, slot].set(token, mode="drop"),
        "logprobs": state.logprobs.at[index, slot].set(logprob, mode="drop"),
    }
    k = state.top_ids.shape[-1]
    if k:
        values, ids = top_alternatives(raw_logits, k)
        updates["top_ids"] = state.top_ids.at[index, slot].set(ids, mode="drop")
        updates["top_logprobs"] = state.top_logprobs.at[index, slot].set(values, mode="drop")
    full = (rows.lengths + 1 >= buffer) | (state.cache.index >= state.cache.length)  # nothing can follow it
    return state.replace(**updates, rows=advance(rows, token, take, rules, full))


def choose_and_append(state: DecodeState, logits: jax.Array, inputs: DecodeInputs) -> DecodeState:
    """Steps 5-8 for one token of every running row, chosen from `logits` [B, V]."""
    token, logprob = choose(state.rows, logits, inputs.rules)
    return append(state, token, logprob, logits, inputs.rules, ~state.rows.done).replace(step=state.step + 1)


def decode_step(logits_fn: LogitsFn, params, state: DecodeState, inputs: DecodeInputs) -> DecodeState:
    """Choose and append one token per row from the carried logits, then feed it through the model for the next
    logits; the forward pass is skipped when no row needs another token."""
    state = choose_and_append(state, state.logits, inputs)

    def forward(state):
        fed = state.rows.last[:, None]
        logits, cache = feed(logits_fn, params, fed, inputs.pad_len, state.cache, ForwardMode.DECODE)
        return state.replace(logits=logits[:, 0].astype(jnp.float32), cache=cache)

    return jax.lax.cond(running(state), forward, lambda state: state, state)


def start(
    logits_fn: LogitsFn, params, inputs: DecodeInputs, cache: KVCache, buffer: int, top_logprobs: int = 0
) -> DecodeState:
    """Prefill: the state the loop (or a stream) continues from; its logits give the first token.

    buffer: the output buffer M; top_logprobs: alternatives recorded per token (both static)."""
    logits, cache = prefill(logits_fn, params, inputs, cache)
    b, v = logits.shape
    pad = inputs.rules.pad_id
    seen = penalties.seen_in_prompt(inputs.tokens, inputs.pad_len, v)
    start = None if inputs.rules.constraints is None else inputs.rules.constraints.start
    return DecodeState(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((b, buffer), pad, jnp.int32),
        logprobs=jnp.zeros((b, buffer), jnp.float32),
        top_ids=jnp.zeros((b, buffer, top_logprobs), jnp.int32),
        top_logprobs=jnp.zeros((b, buffer, top_logprobs), jnp.float32),
        logits=logits.astype(jnp.float32),
        rows=Rows.start(inputs.seed, inputs.row_seeds, seen, ~inputs.active, inputs.rules.stop_seqs.shape[-1], start),
        cache=cache,
    )


def running(state: DecodeState) -> jax.Array:
    """The loop condition: a buffer slot is left and some row runs (a row also finishes when the cache is full)."""
    return (state.step < state.tokens.shape[1]) & ~jnp.all(state.rows.done)


def finish_rows(state: DecodeState) -> DecodeState:
    """Rows still running when the loop ends finish by length."""
    rows = state.rows
    return state.replace(rows=rows.replace(finish=jnp.where(rows.done, rows.finish, LENGTH), done=rows.done | True))


def generate_loop(
    logits_fn: LogitsFn, params, inputs: DecodeInputs, cache: KVCache, buffer: int, top_logprobs: int = 0
) -> DecodeState:
    """The whole decode: prefill, then `while_loop` until every row is done. Jit this (buffer static)."""
    state = start(logits_fn, params, inputs, cache, buffer, top_logprobs)
    state = jax.lax.while_loop(running, lambda s: decode_step(logits_fn, params, s, inputs), state)
    return finish_rows(state)
