"""Steps 7 and 8: append each chosen token and stop per row, inside one `jax.lax.while_loop`.

    prefill (whole prompt, one forward pass) -> while any row runs: choose a token from the carried logits,
    append it, and (unless every row is now done) feed it through the model for the next logits

Choosing happens in one place only, the loop body, so the sampler and penalties are compiled once per program.
The model enters as a callback `logits_fn(params, tokens, positions, mask, cache) -> (logits, cache)`, so the loop
can be tested with a fake model. The same `start` and `decode_step` serve the while loop and streaming.

Axes: B batch, T prompt length (bucketed), S cache slots, M output buffer, V vocabulary, E eos ids.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax import penalties
from gpt_jax.kv_cache import KVCache, cached_positions_and_mask
from gpt_jax.sampling import SamplingParams, row_keys, sample, sanitize, step_keys

LogitsFn = Callable[..., tuple[jax.Array, KVCache]]
RUNNING, EOS, LENGTH, STOP = 0, 1, 2, 3  # finish reasons
FINISH_NAMES = {RUNNING: None, EOS: "eos", LENGTH: "length", STOP: "stop"}
FINISH_CODES = {name: code for code, name in FINISH_NAMES.items()}
MAX_STOP_SEQUENCES, MAX_STOP_TOKENS = 8, 16


@flax.struct.dataclass
class DecodeInputs:
    """Per-call traced values: changing any of them never recompiles."""

    tokens: jax.Array  # [B, T] left-padded prompts
    pad_len: jax.Array  # [B] leading padding slots of each row
    seed: jax.Array  # uint32 scalar
    row_seeds: jax.Array  # [B] row r samples with fold_in(key(seed), row_seeds[r])
    max_new_tokens: jax.Array  # [B] per-row budget, <= M
    active: jax.Array  # [B] False for bucket filler rows
    eos_ids: jax.Array  # [E] stop ids, -1 for unused entries (all -1: ignore EOS)
    stop_seqs: jax.Array  # [8, 16] stop token sequences, right-aligned, -1 before them; all -1: unused
    sampling: SamplingParams
    penalties: penalties.Penalties
    pad_id: jax.Array  # scalar: what finished rows emit


@flax.struct.dataclass
class DecodeState:
    step: jax.Array  # scalar: tokens generated so far
    last: jax.Array  # [B] the token fed to the next forward pass
    tokens: jax.Array  # [B, M] output buffer, pad where nothing was generated
    logprobs: jax.Array  # [B, M] log-probability of each generated token (0 on pad)
    top_ids: jax.Array  # [B, M, k] the k most likely ids at each step (k = 0: not recorded)
    top_logprobs: jax.Array  # [B, M, k] their log-probabilities
    lengths: jax.Array  # [B] tokens generated per row, a final EOS or stop sequence included
    recent: jax.Array  # [B, 16] the last generated tokens (-2 before the first), for stop sequences
    done: jax.Array  # [B]
    finish: jax.Array  # [B] RUNNING / EOS / LENGTH
    keys: jax.Array  # [B] row keys
    logits: jax.Array  # [B, V] fp32 logits the next token is chosen from
    counts: jax.Array  # [B, V] how often each id was generated (for presence/frequency/repetition penalties)
    prompt_seen: jax.Array  # [B, V] ids present in the prompt (for the repetition penalty)
    cache: KVCache


def prefill(logits_fn: LogitsFn, params, inputs: DecodeInputs, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Run the whole left-padded prompt [B, T] through the model; return the last column's logits [B, V]."""
    tokens = inputs.tokens
    positions, mask = cached_positions_and_mask(cache.index, inputs.pad_len, tokens.shape[1], cache.length)
    logits, cache = logits_fn(params, tokens, positions, mask, cache)
    return logits[:, -1], cache


def choose_and_append(state: DecodeState, logits: jax.Array, inputs: DecodeInputs) -> DecodeState:
    """Steps 5-8 for one token: sample from `logits` [B, V], write it, update per-row stop state."""
    t = state.step
    processed = penalties.apply(logits, inputs.penalties, state.prompt_seen, state.counts, t, inputs.eos_ids)
    token, logprob = sample(step_keys(state.keys, t), processed, inputs.sampling, raw_logits=logits)
    token = jnp.where(state.done, inputs.pad_id, token)
    logprob = jnp.where(state.done, 0.0, logprob)
    no_room = state.cache.index >= state.cache.length  # the token could not be fed back: nothing can follow it
    ends = row_endings(state, token, inputs, ~state.done, (t + 1 >= inputs.max_new_tokens) | no_room)
    return state.replace(
        step=t + 1,
        last=token,
        tokens=jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, t)),
        logprobs=jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], (0, t)),
        **_top_alternatives(state, logits, t),
        lengths=jnp.where(state.done, state.lengths, t + 1),
        counts=state.counts.at[jnp.arange(token.shape[0]), token].add(jnp.where(state.done, 0, 1)),
        **ends,
    )


def row_endings(state: DecodeState, token: jax.Array, inputs: DecodeInputs, take: jax.Array, budget: jax.Array):
    """Step 8 for `token` [B] appended where `take`: the rows it ends, by EOS, then a stop sequence, then `budget`
    ([B], the row's budget or room is used up). Returns the new recent, done and finish."""
    is_eos = take & jnp.any(token[:, None] == inputs.eos_ids[None, :], axis=-1)
    recent = jnp.where(take[:, None], jnp.concatenate([state.recent[:, 1:], token[:, None]], axis=1), state.recent)
    is_stop = take & match_stop(recent, inputs.stop_seqs) & ~is_eos
    out_of_budget = take & budget & ~is_eos & ~is_stop
    finish = jnp.where(is_eos, EOS, jnp.where(is_stop, STOP, jnp.where(out_of_budget, LENGTH, state.finish)))
    return {"recent": recent, "done": state.done | is_eos | is_stop | out_of_budget, "finish": finish}


def top_alternatives(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k most likely ids [B, k] under the raw distribution of `logits` [B, V], and their log-probabilities."""
    values, ids = jax.lax.top_k(jax.nn.log_softmax(sanitize(logits), axis=-1), k)
    return values, ids.astype(jnp.int32)


def _top_alternatives(state: DecodeState, logits: jax.Array, t: jax.Array) -> dict:
    """Record the k most likely ids under the raw distribution at step t (k from the buffers' static shape)."""
    k = state.top_ids.shape[-1]
    if k == 0:
        return {}
    values, ids = top_alternatives(logits, k)
    return {
        "top_ids": jax.lax.dynamic_update_slice(state.top_ids, ids[:, None], (0, t, 0)),
        "top_logprobs": jax.lax.dynamic_update_slice(state.top_logprobs, values[:, None], (0, t, 0)),
    }


def match_stop(recent: jax.Array, stop_seqs: jax.Array) -> jax.Array:
    """[B] does `recent` [B, L] (the last L tokens) end with one of the stop sequences [S, L] (right-aligned; or
    [B, S, L], a table per row)?"""
    table = stop_seqs if stop_seqs.ndim == 3 else stop_seqs[None]  # [B or 1, S, L]
    equal = (recent[:, None, :] == table) | (table < 0)  # [B, S, L]
    used = jnp.any(table >= 0, axis=-1)  # [B or 1, S]
    return jnp.any(jnp.all(equal, axis=-1) & used, axis=-1)


def decode_step(logits_fn: LogitsFn, params, state: DecodeState, inputs: DecodeInputs) -> DecodeState:
    """Choose and append one token per row from the carried logits, then feed it through the model for the next
    logits; the forward pass is skipped when no row needs another token."""
    state = choose_and_append(state, state.logits, inputs)

    def forward(state):
        cache = state.cache
        positions, mask = cached_positions_and_mask(cache.index, inputs.pad_len, 1, cache.length)
        logits, cache = logits_fn(params, state.last[:, None], positions, mask, cache)
        return state.replace(logits=logits[:, 0].astype(jnp.float32), cache=cache)

    return jax.lax.cond(running(state), forward, lambda state: state, state)


def start(
    logits_fn: LogitsFn, params, inputs: DecodeInputs, cache: KVCache, buffer: int, top_logprobs: int = 0
) -> DecodeState:
    """Prefill: the state the loop (or a stream) continues from; its logits give the first token.

    buffer: the output buffer M; top_logprobs: alternatives recorded per token (both static)."""
    logits, cache = prefill(logits_fn, params, inputs, cache)
    b = inputs.tokens.shape[0]
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        last=jnp.zeros((b,), jnp.int32),
        tokens=jnp.full((b, buffer), inputs.pad_id, jnp.int32),
        logprobs=jnp.zeros((b, buffer), jnp.float32),
        top_ids=jnp.zeros((b, buffer, top_logprobs), jnp.int32),
        top_logprobs=jnp.zeros((b, buffer, top_logprobs), jnp.float32),
        lengths=jnp.zeros((b,), jnp.int32),
        recent=jnp.full((b, inputs.stop_seqs.shape[1]), -2, jnp.int32),
        done=~inputs.active,
        finish=jnp.full((b,), RUNNING, jnp.int32),
        keys=row_keys(inputs.seed, inputs.row_seeds),
        logits=logits.astype(jnp.float32),
        counts=jnp.zeros((b, logits.shape[-1]), jnp.int32),
        prompt_seen=penalties.seen_in_prompt(inputs.tokens, inputs.pad_len, logits.shape[-1]),
        cache=cache,
    )
    return state


def running(state: DecodeState) -> jax.Array:
    """The loop condition: a buffer slot is left and some row runs (a row also finishes when the cache is full)."""
    return (state.step < state.tokens.shape[1]) & ~jnp.all(state.done)


def finish_rows(state: DecodeState) -> DecodeState:
    """Rows still running when the loop ends (buffer or cache full) finish by length."""
    return state.replace(finish=jnp.where(state.done, state.finish, LENGTH), done=jnp.ones_like(state.done))


def generate_loop(
    logits_fn: LogitsFn, params, inputs: DecodeInputs, cache: KVCache, buffer: int, top_logprobs: int = 0
) -> DecodeState:
    """The whole decode: prefill, then `while_loop` until every row is done. Jit this (buffer static)."""
    state = start(logits_fn, params, inputs, cache, buffer, top_logprobs)
    state = jax.lax.while_loop(running, lambda s: decode_step(logits_fn, params, s, inputs), state)
    return finish_rows(state)
