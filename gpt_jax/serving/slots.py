"""Continuous batching on the device: a fixed number of decode slots, each holding one sequence at its own length.

A request's prompt is prefilled on its own (`prefill`: one pass as `generate` prefills it where it fits one chunk
of C tokens, else in chunks aligned to multiples of C, so that the decoding slots wait for one chunk at most), then
its cache is moved into a free slot with its real tokens at slots 0 .. L-1, and the slots decode together, several
steps per dispatch.
Every per-row value (settings, step count, cache index, keys) lives in the slot state, so one compiled decode
program serves any mix of requests, and a row's arithmetic never depends on what the other slots hold.

    prefill_chunk x ceil(L / C)  ->  insert into slot b  ->  decode (n steps for every slot) ...

Axes: B slots, R prefill rows (the mesh's data axis), T prompt bucket, C chunk, S slot cache length, V vocabulary,
E eos ids, k recorded alternatives, n steps per dispatch.
"""

from __future__ import annotations

from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.decoding import loop, penalties
from gpt_jax.decoding.penalties import Penalties
from gpt_jax.decoding.constraints.device import FREE
from gpt_jax.decoding.rows import MAX_STOP_SEQUENCES, MAX_STOP_TOKENS, RowConstraints, Rows, Rules, advance, choose
from gpt_jax.decoding.rows import top_alternatives
from gpt_jax.decoding.sampling import SamplingParams, sanitize
from gpt_jax.model.kv_cache import KVCache
from gpt_jax.model.row_invariant import ForwardMode, vocabulary_softmax

MIN_ATTEND = 256  # the smallest number of positions a decode dispatch attends to


@flax.struct.dataclass
class SlotState:
    """What the slots carry between dispatches; a free slot is `done`."""

    rows: Rows  # each slot's length, last token, stop state, keys and counts
    rules: Rules  # each slot's sampling, penalties, budget and stop sequences [B, Q, L]; the model's EOS ids
    logits: jax.Array  # [B, V] fp32, the next token is chosen from these
    cache: KVCache  # index [B]: each slot's next cache slot


@flax.struct.dataclass
class RowSettings:
    """One sequence's settings, as `prepare.prepare` made them for its row."""

    seed: jax.Array  # uint32 scalar
    row_seed: jax.Array  # int32 scalar
    max_new_tokens: jax.Array  # int32 scalar
    stop_seqs: jax.Array  # [Q, L]
    sampling: SamplingParams  # scalars
    penalties: Penalties  # scalars, bias [V]
    constraint: jax.Array  # int32 scalar: the initial state of its automaton in the slots' table, -1: free

    @classmethod
    def of(cls, inputs: loop.DecodeInputs, row: int) -> RowSettings:
        """Row `row` of a prepared decode's inputs (host arrays)."""
        rules = inputs.rules
        return cls(
            seed=inputs.seed,
            row_seed=inputs.row_seeds[row],
            max_new_tokens=rules.max_new_tokens[row],
            stop_seqs=rules.stop_seqs[row],
            sampling=jax.tree.map(lambda x: x[row], rules.sampling),
            penalties=jax.tree.map(lambda x: x[row], rules.penalties),
            constraint=np.int32(FREE),
        )


class SlotPrograms:
    """The compiled programs of B slots of S positions for one model: each traced once per shape (prefill: per prompt
    bucket and alternatives; decode: per steps and alternatives, counted in `decode_traces`)."""

    def __init__(self, logits_fn, new_cache, b: int, length: int, vocab: int, eos_ids, pad_id: int, table=None):
        self.logits_fn, self.decode_traces = logits_fn, 0
        self.new_cache = jax.jit(new_cache, static_argnums=(0, 1))
        self.prefill = jax.jit(
            partial(prefill_chunk, logits_fn), static_argnames=("prompt_top", "last_only"), donate_argnums=(3,)
        )
        self.grow = jax.jit(grow, static_argnums=(1,))
        self.insert = jax.jit(insert, donate_argnums=(0,))
        self.decode = jax.jit(self._decode, static_argnames=("steps", "top_logprobs", "attend"), donate_argnums=(1,))
        self.free_all = jax.jit(free_all, donate_argnums=(0,))
        self.empty = jax.jit(lambda: empty_state(new_cache(b, length), b, vocab, eos_ids, pad_id, table))

    def _decode(self, params, state, release, *, steps: int, top_logprobs: int, attend: int | None = None):
        self.decode_traces += 1
        return decode(self.logits_fn, params, state, release, steps=steps, top_logprobs=top_logprobs, attend=attend)


def empty_state(cache: KVCache, b: int, vocab: int, eos_ids, pad_id: int, table=None) -> SlotState:
    """Every slot free; `cache` has B slots of S positions each (its index becomes one per slot); `table`: the
    empty automata table of constrained slots (`constraint_pool`), None: no slot may be constrained."""
    free = jnp.ones((b,), bool)
    rows = Rows.start(jnp.uint32(0), jnp.zeros((b,), jnp.int32), jnp.zeros((b, vocab), bool), free, MAX_STOP_TOKENS)
    rules = Rules(
        sampling=SamplingParams.make(b),
        penalties=Penalties.make(b, vocab),
        max_new_tokens=jnp.ones((b,), jnp.int32),
        eos_ids=jnp.asarray(eos_ids, jnp.int32),
        stop_seqs=jnp.full((b, MAX_STOP_SEQUENCES, MAX_STOP_TOKENS), -1, jnp.int32),
        pad_id=jnp.asarray(pad_id, jnp.int32),
    )
    if table is not None:
        rules = rules.replace(constraints=RowConstraints(table=table, start=jnp.full((b,), FREE, jnp.int32)))
    return SlotState(
        rows=rows.replace(last=jnp.full((b,), pad_id, jnp.int32)),
        rules=rules,
        logits=jnp.zeros((b, vocab), jnp.float32),
        cache=cache.replace(index=jnp.full((b,), cache.length, jnp.int32)),
    )


def free_all(state: SlotState) -> SlotState:
    return state.replace(rows=state.rows.replace(done=jnp.ones_like(state.rows.done)))


def prefill_chunk(
    logits_fn, params, tokens, pad_len, cache: KVCache, following, last, *, prompt_top: int = -1, last_only=False
):
    """The next C columns [R, C] of prompts (left-padded by `pad_len` [R]) into `cache` (P slots, written from
    cache.index); returns the fp32 logits [R, V] of column `last` (the prompt's last token, where it ends in this
    chunk), the cache, and with prompt_top = k >= 0 the log-probability [R, C] of each column's `following` token
    [R, C] (the prompt's next one) and the k most likely ids [R, C, k] with theirs (None otherwise).
    `last_only`: the head runs on the last column alone (it is `last`, or no logits are needed; no scores)."""
    if last_only:
        logits, cache = loop.feed(logits_fn, params, tokens, pad_len, cache, ForwardMode.PREFILL, last_only=True)
        return logits[:, -1].astype(jnp.float32), cache, None
    logits, cache = loop.feed(logits_fn, params, tokens, pad_len, cache, ForwardMode.PREFILL)
    scores = None
    if prompt_top >= 0:
        logprobs = vocabulary_softmax(sanitize(logits), log=True)
        scores = {"logprobs": jnp.take_along_axis(logprobs, following[..., None], axis=-1)[..., 0]}
        if prompt_top:
            scores["top_logprobs"], scores["top_ids"] = jax.lax.top_k(logprobs, prompt_top)
    picked = jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False)
    return picked.astype(jnp.float32), cache, scores


def grow(cache: KVCache, length: int) -> KVCache:
    """A prefill cache with empty positions added up to `length`."""
    more = length - cache.length
    return cache.replace(
        k=tuple(jnp.pad(k, ((0, 0), (0, 0), (0, more))) for k in cache.k),
        v=tuple(jnp.pad(v, ((0, 0), (0, more), (0, 0))) for v in cache.v),
    )


def insert(
    state: SlotState,
    slot: jax.Array,
    prompt: jax.Array,
    pad_len: jax.Array,
    shift: jax.Array,
    prompt_cache: KVCache,
    logits: jax.Array,
    row: RowSettings,
) -> SlotState:
    """Start a sequence in `slot`: its prefilled cache (row 0 of `prompt_cache`, P slots, the prompt's tokens from
    slot `shift` on; the prompt [T] itself left-padded by `pad_len`) moves to slots 0 .. L-1, and its first token
    will be chosen from `logits` [V]."""
    kv_heads = state.cache.k[0].shape[0] // state.cache.index.shape[0]
    start, length = slot * kv_heads, state.cache.length

    def place(full, part, axis):  # part [R*K, ...] with P slots on `axis`; real tokens rolled to the front
        part = jnp.roll(part[:kv_heads], -shift, axis=axis)
        part = jax.lax.slice_in_dim(part, 0, min(length, part.shape[axis]), axis=axis)  # a bucket past the slot
        return jax.lax.dynamic_update_slice(full, part, (start, 0, 0))

    cache = state.cache.replace(
        k=tuple(place(f, p, 2) for f, p in zip(state.cache.k, prompt_cache.k)),
        v=tuple(place(f, p, 1) for f, p in zip(state.cache.v, prompt_cache.v)),
        index=state.cache.index.at[slot].set(prompt.shape[0] - pad_len),
    )
    seen = penalties.seen_in_prompt(prompt[None], pad_len[None], state.logits.shape[-1])[0]
    set_row = lambda table, value: table.at[slot].set(value)
    fresh = Rows.start(
        row.seed, row.row_seed[None], seen[None], jnp.zeros((1,), bool), MAX_STOP_TOKENS, row.constraint[None]
    )
    fresh = fresh.replace(last=jnp.full((1,), state.rules.pad_id, jnp.int32))
    rules = state.rules.replace(
        sampling=jax.tree.map(set_row, state.rules.sampling, row.sampling),
        penalties=jax.tree.map(set_row, state.rules.penalties, row.penalties),
        max_new_tokens=set_row(state.rules.max_new_tokens, row.max_new_tokens),
        stop_seqs=set_row(state.rules.stop_seqs, row.stop_seqs),
    )
    rows = jax.tree.map(lambda table, value: table.at[slot].set(value[0]), state.rows, fresh)
    return state.replace(rows=rows, rules=rules, logits=set_row(state.logits, logits), cache=cache)


def decode(
    logits_fn, params, state: SlotState, release: jax.Array, *, steps: int, top_logprobs: int, attend=None
):
    """`steps` decode steps of every slot; slots in `release` [B] are freed first. `attend`: the steps see only
    the first `attend` positions of each slot's cache (every live slot's index + steps must fit in them; the
    caller's `attend_bucket`), which cost what they hold, not the slot's whole length.

    Returns the state and, per step, tokens [n, B], logprobs [n, B], live [n, B] (the slot's sequence took this
    step's token), finish [n, B] (after the step), and with top_logprobs = k > 0 the k most likely ids [n, B, k]
    and their log-probabilities."""
    state = state.replace(rows=state.rows.replace(done=state.rows.done | release))
    if attend is not None and attend < state.cache.length:  # written in place, attended where it lies
        state = state.replace(cache=state.cache.replace(view=attend))

    def one_step(state: SlotState, _):
        live = ~state.rows.done
        token, logprob = choose(state.rows, state.logits, state.rules)
        token = jnp.where(live, token, state.rules.pad_id)
        full = state.cache.index >= state.cache.length  # the token could not be fed back: nothing can follow it
        out = {"tokens": token, "logprobs": jnp.where(live, logprob, 0.0), "live": live}
        if top_logprobs:
            out["top_logprobs"], out["top_ids"] = top_alternatives(state.logits, top_logprobs)
        state = state.replace(rows=advance(state.rows, token, live, state.rules, full))
        running = jnp.any(~state.rows.done)
        state = jax.lax.cond(running, lambda s: forward(logits_fn, params, s), lambda s: s, state)
        return state, {**out, "finish": state.rows.finish}

    state, out = jax.lax.scan(one_step, state, None, length=steps)
    return state.replace(cache=state.cache.replace(view=None)), out


def attend_bucket(reach: int, length: int) -> int:
    """The positions a dispatch attends to when no live slot goes past `reach`: the smallest of MIN_ATTEND * 2**i
    that holds it, or the slots' whole `length` where that is smaller. One compiled decode program per bucket
    used."""
    bucket = MIN_ATTEND
    while bucket < reach:
        bucket *= 2
    return min(bucket, length)


def forward(logits_fn, params, state: SlotState) -> SlotState:
    """Feed each slot's last token at its own cache slot; free slots stay at the end of their cache."""
    cache = state.cache
    b = cache.index.shape[0]
    fed = state.rows.last[:, None]
    logits, cache = loop.feed(logits_fn, params, fed, jnp.zeros((b,), jnp.int32), cache, ForwardMode.DECODE)
    cache = cache.replace(index=jnp.minimum(cache.index, cache.length))
    return state.replace(logits=logits[:, 0].astype(jnp.float32), cache=cache)
