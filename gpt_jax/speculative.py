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
Emitted tokens are appended one at a time with plain decoding's stop rules (EOS, stop sequences, budget), so a row
stops exactly where it would.

Rows accept different counts, so here the cache index is per row (`kv_cache`); slots written for rejected proposals
lie beyond the row's index, masked (causal) until overwritten. Each row keeps a running average of the proposals
it gets accepted per pass (`credit`); when that falls below 0.3 the row stops proposing for 4 steps, then 16, 64
and 256 while its trial passes keep failing (a pass that restores the credit ends the backoff). When no row
proposes, the step is a plain one-position forward pass: wrong proposals cost a few wide passes, right ones save
most of the passes.

Proposers (static settings; their traced data, if any, travel in `extra`):
  PromptLookup  - the tokens that followed the latest earlier occurrence of the row's last n tokens (n from
                  max_ngram down to 1) in its prompt and output, continued periodically where they reach the
                  row's end (so a run of repeats proposes k tokens); no second model.
  DraftModel    - a smaller model with the same vocabulary runs k steps ahead with its own cache, drawing with the
                  target's per-position keys and sampling settings (no penalties), so where the two distributions
                  agree their draws coincide.
  Reference     - given tokens, each replaced by a wrong one with probability 1 - accuracy: the benchmark's probe
                  of the mechanism itself.

Axes: B batch, W = k + 1 positions verified, M output buffer, N = T + M history, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax import loop, penalties
from gpt_jax.errors import InputError, check
from gpt_jax.kv_cache import KVCache, cached_positions_and_mask
from gpt_jax.sampling import sample, step_keys

MAX_PROPOSED = 16
CREDIT_START, CREDIT_DECAY, CREDIT_FLOOR = 0.6, 0.7, 0.3  # accepted proposals per pass: start, averaging, floor
FIRST_PAUSE, MAX_PAUSE = 4, 256


def _check_count(name: str, value, high: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high
    check(ok, InputError, f"{name} must be an integer in [1, {high}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class PromptLookup:
    """Propose the `num_tokens` tokens that followed the latest earlier match of the last n tokens."""

    num_tokens: int = 4
    max_ngram: int = 3

    def __post_init__(self):
        _check_count("num_tokens", self.num_tokens, MAX_PROPOSED)
        _check_count("max_ngram", self.max_ngram, 8)


@dataclasses.dataclass(frozen=True, eq=False)
class DraftModel:
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
        _check_count("num_tokens", self.num_tokens, MAX_PROPOSED)
        check(
            hasattr(self.generator, "programs") and hasattr(self.generator, "config"),
            InputError,
            f"DraftModel needs a gpt_jax.Generator, got {type(self.generator).__name__}",
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
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
        _check_count("num_tokens", self.num_tokens, MAX_PROPOSED)
        check(0.0 <= self.accuracy <= 1.0, InputError, f"accuracy must be in [0, 1], got {self.accuracy!r}")


Proposer = PromptLookup | DraftModel | Reference


def check_draft(draft: DraftModel, config, tokenizer) -> None:
    """A draft must share the target's vocabulary: same size and, where both have tokenizers, the same tokens."""
    other = draft.generator
    check(
        other.config.vocab_size == config.vocab_size,
        InputError,
        f"the draft model's vocabulary ({other.config.vocab_size} ids) differs from the model's "
        f"({config.vocab_size}): a draft must share the tokenizer",
    )
    if tokenizer is not None and other.tokenizer is not None:
        same = all(tokenizer.token_bytes(i) == other.tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size))
        check(same, InputError, "the draft model's tokenizer maps ids to other tokens: a draft must share it")


@flax.struct.dataclass
class SpecState:
    decode: loop.DecodeState  # its cache has one index per row
    accepted: jax.Array  # [B] proposed tokens emitted
    proposed: jax.Array  # [B] tokens proposed
    passes: jax.Array  # [B] forward passes of the model while the row ran (prefill included)
    credit: jax.Array  # [B] running average of proposals accepted per pass that offered some
    pause: jax.Array  # [B] steps left without proposing
    backoff: jax.Array  # [B] the next pause
    draft_cache: KVCache | None


def start(logits_fn, params, inputs, cache, buffer, top_logprobs, proposer, draft_fn=None, extra=None) -> SpecState:
    """Prefill and the first token (as plain decoding), then per-row cache indices."""
    state = loop.start(logits_fn, params, inputs, cache, buffer, top_logprobs)
    state = loop.choose_and_append(state, state.logits, inputs)
    b = inputs.tokens.shape[0]
    state = state.replace(cache=state.cache.replace(index=jnp.full((b,), state.cache.index, jnp.int32)))
    zeros = jnp.zeros((b,), jnp.int32)
    draft_cache = None
    if isinstance(proposer, DraftModel):
        draft_cache = draft_prefill(draft_fn, extra["draft_params"], inputs, extra["draft_cache"])
    credit, backoff = jnp.full((b,), CREDIT_START), jnp.full((b,), FIRST_PAUSE, jnp.int32)
    return SpecState(state, zeros, zeros, jnp.ones((b,), jnp.int32), credit, zeros, backoff, draft_cache)


def draft_prefill(draft_fn, draft_params, inputs, cache: KVCache) -> KVCache:
    """The prompt through the draft model (its logits unused: the target chose the first token)."""
    _, cache = loop.prefill(draft_fn, draft_params, inputs, cache)
    b = inputs.tokens.shape[0]
    return cache.replace(index=jnp.full((b,), cache.index, jnp.int32))


def history(state: loop.DecodeState, inputs: loop.DecodeInputs) -> tuple[jax.Array, jax.Array]:
    """Each row's text so far, prompt then output, as one buffer [B, N] and its end [B] (exclusive)."""
    return jnp.concatenate([inputs.tokens, state.tokens], axis=1), inputs.tokens.shape[1] + state.lengths


def lookup(tokens: jax.Array, end: jax.Array, pad_len: jax.Array, k: int, max_ngram: int) -> jax.Array:
    """Prompt lookup: [B, k] proposals, -1 where none. tokens [B, N] hold each row's text in pad_len..end-1."""
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


def reference_proposals(state: loop.DecodeState, proposer: Reference, extra: dict) -> jax.Array:
    """The reference's next k tokens per row, each wrong with probability 1 - accuracy."""
    ref = extra["reference"]  # [B, M]
    b, m = ref.shape
    at = state.lengths[:, None] + jnp.arange(proposer.num_tokens)[None, :]  # [B, k]
    right = jnp.take_along_axis(ref, jnp.clip(at, 0, m - 1), axis=1)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(extra["key_seed"]), state.lengths)  # per row, step
    keys = jax.vmap(jax.random.fold_in)(keys, jnp.arange(b))
    draws = jax.vmap(lambda key: jax.random.uniform(key, (proposer.num_tokens, 2)))(keys)  # [B, k, 2]
    wrong = (right + 1 + (draws[..., 1] * 1000).astype(jnp.int32)) % extra["vocab_size"]
    wrong = jnp.where(wrong == right, (right + 1) % extra["vocab_size"], wrong)
    return jnp.where(at < m, jnp.where(draws[..., 0] < extra["accuracy"], right, wrong), -1)


def draft_proposals(spec: SpecState, inputs, proposer: DraftModel, draft_fn, extra) -> tuple[jax.Array, KVCache]:
    """k tokens from the draft model: it first takes in the token before `last` and `last` (so its cache holds
    every emitted token, whatever was accepted), then draws k times with the target's keys and sampling."""
    state, cache = spec.decode, spec.draft_cache
    index = state.cache.index  # [B] the slot of `last`
    previous = jnp.take_along_axis(state.tokens, jnp.maximum(state.lengths - 2, 0)[:, None], axis=1)[:, 0]
    before = jnp.where(state.lengths >= 2, previous, inputs.tokens[:, -1])  # the prompt's last, at first
    feed = jnp.stack([before, state.last], axis=1)  # [B, 2] at slots index-1, index
    cache = cache.replace(index=index - 1)
    proposals = []
    for j in range(proposer.num_tokens):
        positions, mask = cached_positions_and_mask(cache.index, inputs.pad_len, feed.shape[1], cache.length)
        logits, cache = draft_fn(extra["draft_params"], feed, positions, mask, cache)
        token, _ = sample(step_keys(state.keys, state.lengths + j), logits[:, -1], inputs.sampling)
        proposals.append(token)
        feed = token[:, None]
    return jnp.stack(proposals, axis=1), cache


def append(state: loop.DecodeState, token, logprob, raw_logits, inputs: loop.DecodeInputs, take) -> loop.DecodeState:
    """Append `token` [B] to the rows where `take`, at each row's own position, with plain decoding's stop rules."""
    t, rows, buffer = state.lengths, jnp.arange(token.shape[0]), state.tokens.shape[1]
    ends = loop.row_endings(state, token, inputs, take, (t + 1 >= inputs.max_new_tokens) | (t + 1 >= buffer))
    slot = jnp.where(take, t, buffer)  # out of range: dropped
    updates = {
        "tokens": state.tokens.at[rows, slot].set(token, mode="drop"),
        "logprobs": state.logprobs.at[rows, slot].set(logprob, mode="drop"),
    }
    k = state.top_ids.shape[-1]
    if k:
        values, ids = loop.top_alternatives(raw_logits, k)
        updates["top_ids"] = state.top_ids.at[rows, slot].set(ids, mode="drop")
        updates["top_logprobs"] = state.top_logprobs.at[rows, slot].set(values, mode="drop")
    return state.replace(
        **updates,
        **ends,
        last=jnp.where(take, token, state.last),
        lengths=jnp.where(take, t + 1, t),
        counts=state.counts.at[rows, jnp.where(take, token, 0)].add(take.astype(jnp.int32)),
    )


def verify(logits_fn, params, spec: SpecState, inputs, proposals: jax.Array) -> SpecState:
    """One forward pass over [last, proposals] [B, W]; emit the model's choices up to the first disagreement."""
    state = spec.decode
    b, width = proposals.shape[0], proposals.shape[1] + 1
    index, running = state.cache.index, ~state.done
    fed = jnp.concatenate([state.last[:, None], jnp.where(proposals >= 0, proposals, inputs.pad_id)], axis=1)
    positions, mask = cached_positions_and_mask(index, inputs.pad_len, width, state.cache.length)
    logits, cache = logits_fn(params, fed, positions, mask, state.cache)
    logits = logits.astype(jnp.float32)  # [B, W, V]
    counts, rows = state.counts, jnp.arange(b)
    choices, logprobs = [], []
    for j in range(width):
        t = state.lengths + j
        processed = penalties.apply(logits[:, j], inputs.penalties, state.prompt_seen, counts, t, inputs.eos_ids)
        token, logprob = sample(step_keys(state.keys, t), processed, inputs.sampling, raw_logits=logits[:, j])
        choices.append(token)
        logprobs.append(logprob)
        if j + 1 < width:  # the choice at j + 1 follows proposal j + 1, as if it had been emitted
            p = proposals[:, j]
            counts = counts.at[rows, jnp.maximum(p, 0)].add((p >= 0).astype(jnp.int32))
    accepted = jnp.zeros_like(index)  # leading proposals equal to the choice before them
    if width > 1:
        agree = jnp.stack([proposals[:, j] == choices[j] for j in range(width - 1)], axis=1)  # [B, W-1]
        accepted = jnp.sum(jnp.cumprod(agree.astype(jnp.int32), axis=1), axis=1)
    state = state.replace(cache=cache)
    for j in range(width):
        take = ~state.done & (j <= accepted)
        state = append(state, choices[j], logprobs[j], logits[:, j], inputs, take)
    emitted = state.lengths - spec.decode.lengths
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


def step(logits_fn, params, spec: SpecState, inputs, proposer: Proposer, draft_fn=None, extra=None) -> SpecState:
    """Propose, then verify: k + 1 positions when some row proposes, else one (a plain step)."""
    state = spec.decode
    if isinstance(proposer, PromptLookup):
        tokens, end = history(state, inputs)
        proposals = lookup(tokens, end, inputs.pad_len, proposer.num_tokens, proposer.max_ngram)
    elif isinstance(proposer, DraftModel):
        proposals, draft_cache = draft_proposals(spec, inputs, proposer, draft_fn, extra)
        spec = spec.replace(draft_cache=draft_cache)
    else:
        proposals = reference_proposals(state, proposer, extra)
    proposing = (~state.done & (spec.pause == 0))[:, None]
    proposals = jnp.where(proposing, proposals, -1)
    # "wide if any row proposes, else narrow" as two while loops of at most one turn each, not a lax.cond: XLA:CPU
    # copied the whole state (KV cache included) into and out of the conditional, 6% of a GPT-2-small step.
    wide = jnp.any(proposals[:, 0] >= 0)

    def once(width: int, run: jax.Array, spec: SpecState) -> SpecState:
        turn = lambda carry: (verify(logits_fn, params, carry[0], inputs, proposals[:, : width - 1]), ~carry[1])
        return jax.lax.while_loop(lambda carry: carry[1], turn, (spec, run))[0]

    spec = once(1, ~wide, once(proposals.shape[1] + 1, wide, spec))
    if isinstance(proposer, DraftModel):  # the draft's cache follows the rows' emitted tokens
        spec = spec.replace(draft_cache=spec.draft_cache.replace(index=spec.decode.cache.index))
    return spec


def run_loop(logits_fn, params, spec: SpecState, inputs, proposer: Proposer, draft_fn=None, extra=None) -> SpecState:
    """From `start`'s state, step until every row is done; jit with the proposer static."""
    spec = jax.lax.while_loop(
        lambda s: ~jnp.all(s.decode.done),
        lambda s: step(logits_fn, params, s, inputs, proposer, draft_fn, extra),
        spec,
    )
    return spec.replace(decode=loop.finish_rows(spec.decode))
