"""Speculative decoding that never changes the output.

Each step, a row proposes up to k tokens P_1..P_k to follow its last token; the model runs once over the k + 1
positions [last, P_1..P_k] (written to the row's own cache slots) and, at each position j, chooses c_j exactly as
plain decoding chooses that token: the same penalties (their counts advanced by P_1..P_j, the tokens before it), the
same sampler with the same key fold_in(row_key, t + j). The row emits c_0, c_1, ..., c_n, where n is the number of
leading proposals equal to the choice before them (P_{j+1} == c_j). Every emitted token is the model's own choice,
made from the state and key plain decoding would have used, so the output is plain decoding's for any k and any
proposer; proposals only decide how many tokens one forward pass yields. Bit for bit: the decode step's
arithmetic is row-invariant (`row_invariant`), so position j of a k + 1-position pass gets the logits a one-token
step would, and plain and speculative decodes keep the same cache length.
Emitted tokens are appended one at a time by plain decoding's own `loop.append` (the stop rules of `rows.advance`:
EOS, stop sequences, budget), so a row stops exactly where it would.

Rows accept different counts, so here the cache index is per row (`kv_cache`); slots written for rejected proposals
lie beyond the row's index, masked (causal) until overwritten. Each row keeps a running average of the proposals
it gets accepted per pass (`credit`); when that falls below 0.3 the row stops proposing for 4 steps, then 16, 64
and 256 while its trial passes keep failing (a pass that restores the credit ends the backoff). When no row
proposes, the step is a plain one-position forward pass: wrong proposals cost a few wide passes, right ones save
most of the passes.

Proposers implement `proposer.Proposer` (one file each: `prompt_lookup.py`, `draft.py`; the benchmark's probe
lives with the benchmark); their traced data, if any, travels in `extra`.

Axes: B batch, W = k + 1 positions verified, M output buffer, N = T + M history, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax.decoding import loop
from gpt_jax.decoding.constraints import device as automata
from gpt_jax.decoding.rows import choose
from gpt_jax.decoding.speculation.proposer import Proposer
from gpt_jax.model.row_invariant import ForwardMode

CREDIT_START, CREDIT_DECAY, CREDIT_FLOOR = 0.6, 0.7, 0.3  # accepted proposals per pass: start, averaging, floor
FIRST_PAUSE, MAX_PAUSE = 4, 256


@flax.struct.dataclass
class SpecState:
    decode: loop.DecodeState  # its cache has one index per row
    accepted: jax.Array  # [B] proposed tokens emitted
    proposed: jax.Array  # [B] tokens proposed
    passes: jax.Array  # [B] forward passes of the model while the row ran (prefill included)
    credit: jax.Array  # [B] running average of proposals accepted per pass that offered some
    pause: jax.Array  # [B] steps left without proposing
    backoff: jax.Array  # [B] the next pause
    proposer_state: Any  # the proposer's own state (a draft model's cache), None for most


def start(logits_fn, params, inputs, cache, buffer, top_logprobs, proposer: Proposer, extra: dict) -> SpecState:
    """Prefill and the first token (as plain decoding), then per-row cache indices."""
    state = loop.start(logits_fn, params, inputs, cache, buffer, top_logprobs)
    state = loop.choose_and_append(state, state.logits, inputs)
    b = inputs.tokens.shape[0]
    state = state.replace(cache=state.cache.replace(index=jnp.full((b,), state.cache.index, jnp.int32)))
    zeros = jnp.zeros((b,), jnp.int32)
    own = proposer.start(inputs, cache.length, extra)
    credit, backoff = jnp.full((b,), CREDIT_START), jnp.full((b,), FIRST_PAUSE, jnp.int32)
    return SpecState(state, zeros, zeros, jnp.ones((b,), jnp.int32), credit, zeros, backoff, own)


def verify(logits_fn, params, spec: SpecState, inputs, proposals: jax.Array) -> SpecState:
    """One forward pass over [last, proposals] [B, W]; emit the model's choices up to the first disagreement."""
    state, rules = spec.decode, inputs.rules
    b, width = proposals.shape[0], proposals.shape[1] + 1
    index, running = state.cache.index, ~state.rows.done
    fed = jnp.concatenate([state.rows.last[:, None], jnp.where(proposals >= 0, proposals, rules.pad_id)], axis=1)
    logits, cache = loop.feed(logits_fn, params, fed, inputs.pad_len, state.cache, ForwardMode.VERIFY)
    logits = logits.astype(jnp.float32)  # [B, W, V]
    counts, rows, constraint = state.rows.counts, jnp.arange(b), state.rows.constraint
    choices, logprobs = [], []
    for j in range(width):
        t = state.rows.lengths + j
        token, logprob = choose(state.rows, logits[:, j], rules, t=t, counts=counts, state=constraint)
        choices.append(token)
        logprobs.append(logprob)
        if j + 1 < width:  # the choice at j + 1 follows proposal j + 1, as if it had been emitted
            p = proposals[:, j]
            counts = counts.at[rows, jnp.maximum(p, 0)].add((p >= 0).astype(jnp.int32))
            if rules.constraints is not None:  # a proposal the automaton rejects differs from every choice
                constraint = automata.follow(rules.constraints.table, constraint, jnp.maximum(p, 0))
    accepted = jnp.zeros_like(index)  # leading proposals equal to the choice before them
    if width > 1:
        agree = jnp.stack([proposals[:, j] == choices[j] for j in range(width - 1)], axis=1)  # [B, W-1]
        accepted = jnp.sum(jnp.cumprod(agree.astype(jnp.int32), axis=1), axis=1)
    state = state.replace(cache=cache)
    for j in range(width):
        take = ~state.rows.done & (j <= accepted)
        state = loop.append(state, choices[j], logprobs[j], logits[:, j], rules, take)
    emitted = state.rows.lengths - spec.decode.rows.lengths
    state = state.replace(cache=cache.replace(index=index + emitted), step=state.step + 1)
    offered = jnp.sum(proposals >= 0, axis=1) * running
    tried = offered > 0
    credit = jnp.where(tried, CREDIT_DECAY * spec.credit + (1 - CREDIT_DECAY) * (emitted - 1), spec.credit)
    stop = tried & (credit < CREDIT_FLOOR)
    pause = jnp.where(stop, spec.backoff, jnp.maximum(spec.pause - 1, 0))
    backoff = jnp.where(stop, jnp.minimum(4 * spec.backoff, MAX_PAUSE), jnp.where(tried, FIRST_PAUSE, spec.backoff))
    return spec.replace(
        decode=state,
        accepted=spec.accepted + jnp.maximum(emitted - 1, 0),
        proposed=spec.proposed + offered,
        passes=spec.passes + running,
        credit=credit,
        pause=pause,
        backoff=backoff,
    )


def step(logits_fn, params, spec: SpecState, inputs, proposer: Proposer, extra: dict) -> SpecState:
    """Propose, then verify: k + 1 positions when some row proposes, else one (a plain step)."""
    state = spec.decode
    proposals, own = proposer.propose(spec, inputs, extra)
    spec = spec.replace(proposer_state=own)
    proposing = (~state.rows.done & (spec.pause == 0))[:, None]
    proposals = jnp.where(proposing, proposals, -1)
    # "wide if any row proposes, else narrow" as two while loops of at most one turn each, not a lax.cond, which
    # XLA:CPU compiles to a copy of the whole state (KV cache included) into and out of the conditional
    # (docs/BENCHMARKS.md, "Measurements behind design choices").
    wide = jnp.any(proposals[:, 0] >= 0)

    def once(width: int, run: jax.Array, spec: SpecState) -> SpecState:
        turn = lambda carry: (verify(logits_fn, params, carry[0], inputs, proposals[:, : width - 1]), ~carry[1])
        return jax.lax.while_loop(lambda carry: carry[1], turn, (spec, run))[0]

    spec = once(1, ~wide, once(proposals.shape[1] + 1, wide, spec))
    return spec.replace(proposer_state=proposer.follow(spec))


def run_loop(logits_fn, params, spec: SpecState, inputs, proposer: Proposer, extra: dict) -> SpecState:
    """From `start`'s state, step until every row is done; jit with the proposer static."""
    spec = jax.lax.while_loop(
        lambda s: ~jnp.all(s.decode.rows.done),
        lambda s: step(logits_fn, params, s, inputs, proposer, extra),
        spec,
    )
    return spec.replace(decode=loop.finish_rows(spec.decode))
