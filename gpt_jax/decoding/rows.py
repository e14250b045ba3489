"""Steps 5-8 for one token of every row, written once: plain decoding, speculation and the serving slots all call
`choose` (penalties, then the sampler with the row's key for its t-th token) and `advance` (the finished rows
masked, the endings: EOS, then a stop sequence, then the budget; the counts the penalties read).

`Rules` is what decides each row's tokens and its end (traced, per row); `Rows` is each row's progress. A plain
decode carries them in `loop.DecodeInputs` / `loop.DecodeState`, the serving slots in `serving.slots.SlotState`.

Axes: B rows, V vocabulary, E eos ids, Q stop sequences, L their longest length (the recent tokens kept).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax.decoding import penalties
from gpt_jax.decoding.constraints import device as automata
from gpt_jax.decoding.sampling import SamplingParams, row_keys, sample, sanitize, step_keys
from gpt_jax.model.numerics import MASK_VALUE
from gpt_jax.model.row_invariant import vocabulary_softmax

RUNNING, EOS, LENGTH, STOP = 0, 1, 2, 3  # finish reasons
FINISH_NAMES = {RUNNING: None, EOS: "eos", LENGTH: "length", STOP: "stop"}
FINISH_CODES = {name: code for code, name in FINISH_NAMES.items()}
MAX_STOP_SEQUENCES, MAX_STOP_TOKENS = 16, 16  # the in-loop stop matcher: sequences per row, tokens each


@flax.struct.dataclass
class Rules:
    """Per-row traced settings: changing any of them never recompiles."""

    sampling: SamplingParams  # [B] each
    penalties: penalties.Penalties  # [B] each, bias [B, V]
    max_new_tokens: jax.Array  # [B] per-row budget
    eos_ids: jax.Array  # [E] stop ids, -1 for unused entries (all -1: ignore EOS)
    stop_seqs: jax.Array  # [B, Q, L] stop token sequences, right-aligned, -1 before them; all -1: unused
    pad_id: jax.Array  # scalar: what finished rows emit
    constraints: RowConstraints | None = None  # None: no row is constrained (the program has no automaton)


@flax.struct.dataclass
class RowConstraints:
    """The automata of a batch (`constraints.device`) and each row's initial state in them (-1: free)."""

    table: automata.Automata
    start: jax.Array  # [B]


@flax.struct.dataclass
class Rows:
    """Each row's progress."""

    lengths: jax.Array  # [B] tokens generated, a final EOS or stop sequence included
    last: jax.Array  # [B] the token fed to the next forward pass
    recent: jax.Array  # [B, L] the last generated tokens (-2 before the first), for stop sequences
    done: jax.Array  # [B]
    finish: jax.Array  # [B] RUNNING / EOS / LENGTH / STOP
    keys: jax.Array  # [B] row keys
    counts: jax.Array  # [B, V] how often each id was generated (presence/frequency/repetition penalties)
    prompt_seen: jax.Array  # [B, V] ids present in the prompt (repetition penalty)
    constraint: jax.Array  # [B] each row's automaton state (-1: free)

    @classmethod
    def start(cls, seed, row_seeds, prompt_seen: jax.Array, done: jax.Array, recent: int, constraint=None) -> Rows:
        """Rows before their first token: `done` [B] for rows that take none (bucket filler, free slots);
        `constraint` [B]: each row's initial automaton state (default: every row free)."""
        b, v = prompt_seen.shape
        return cls(
            lengths=jnp.zeros((b,), jnp.int32),
            last=jnp.zeros((b,), jnp.int32),
            recent=jnp.full((b, recent), -2, jnp.int32),
            done=done,
            finish=jnp.full((b,), RUNNING, jnp.int32),
            keys=row_keys(seed, row_seeds),
            counts=jnp.zeros((b, v), jnp.int32),
            prompt_seen=prompt_seen,
            constraint=jnp.full((b,), automata.FREE, jnp.int32) if constraint is None else constraint,
        )


def choose(rows: Rows, logits: jax.Array, rules: Rules, t=None, counts=None, state=None) -> tuple[jax.Array, jax.Array]:
    """Steps 5 and 6: each row's token [B] from `logits` [B, V] and its log-probability, for the row's t-th token
    (default: its next one, `rows.lengths`) with penalties over `counts` (default: what it generated), and the
    tokens its automaton `state` [B] (default: the row's) does not allow masked before temperature and the filters.
    The log-probability is the model's own (unmasked, unprocessed) distribution's."""
    t = rows.lengths if t is None else t
    counts = rows.counts if counts is None else counts
    processed = penalties.apply(logits, rules.penalties, rows.prompt_seen, counts, t, rules.eos_ids)
    if rules.constraints is not None:
        state = rows.constraint if state is None else state
        ok = automata.allowed(rules.constraints.table, state, rules.eos_ids, logits.shape[-1])
        processed = jnp.where(ok, processed, MASK_VALUE)
    return sample(step_keys(rows.keys, t), processed, rules.sampling, raw_logits=logits)


def advance(rows: Rows, token: jax.Array, take: jax.Array, rules: Rules, full: jax.Array) -> Rows:
    """Steps 7 and 8 for `token` [B], appended where `take` [B]: the rows it ends, by EOS, then a stop sequence or
    the automaton (a full match nothing can follow), then the budget (`max_new_tokens`, or `full` [B]: no room for
    another token), and the counts."""
    t = rows.lengths
    is_eos = take & jnp.any(token[:, None] == rules.eos_ids[None, :], axis=-1)
    recent = jnp.where(take[:, None], jnp.concatenate([rows.recent[:, 1:], token[:, None]], axis=1), rows.recent)
    is_stop = take & match_stop(recent, rules.stop_seqs) & ~is_eos
    state = rows.constraint
    if rules.constraints is not None:
        table = rules.constraints.table
        state = jnp.where(take & ~is_eos, automata.follow(table, state, token), state)
        is_stop |= take & (state >= 0) & table.dead_end[jnp.maximum(state, 0)] & ~is_eos
    out_of_budget = take & ((t + 1 >= rules.max_new_tokens) | full) & ~is_eos & ~is_stop
    finish = jnp.where(is_eos, EOS, jnp.where(is_stop, STOP, jnp.where(out_of_budget, LENGTH, rows.finish)))
    return rows.replace(
        lengths=jnp.where(take, t + 1, t),
        last=jnp.where(take, token, rows.last),
        recent=recent,
        done=rows.done | is_eos | is_stop | out_of_budget,
        finish=finish,
        counts=rows.counts.at[jnp.arange(token.shape[0]), token].add(take.astype(jnp.int32)),
        constraint=state,
    )


def match_stop(recent: jax.Array, stop_seqs: jax.Array) -> jax.Array:
    """[B] does `recent` [B, L] (the last L tokens) end with one of the row's stop sequences [B, Q, L]?"""
    equal = (recent[:, None, :] == stop_seqs) | (stop_seqs < 0)  # [B, Q, L]
    used = jnp.any(stop_seqs >= 0, axis=-1)  # [B, Q]
    return jnp.any(jnp.all(equal, axis=-1) & used, axis=-1)


def top_alternatives(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k most likely ids [B, k] under the raw distribution of `logits` [B, V], and their log-probabilities."""
    values, ids = jax.lax.top_k(vocabulary_softmax(sanitize(logits), log=True), k)
    return values, ids.astype(jnp.int32)
