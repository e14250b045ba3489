"""Checking the arguments of a generate call, and turning them into the traced inputs of the decode.

Every setting may be a scalar or one value per prompt; every check runs before anything is compiled and raises an
`InputError` naming the argument, the value and what is allowed. Also the text-level helpers for stop strings.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Sequence

import numpy as np

from gpt_jax import decode
from gpt_jax.batching import MIN_LENGTH_BUCKET, bucket, left_pad
from gpt_jax.config import ModelConfig
from gpt_jax.errors import InputError, check
from gpt_jax.penalties import Penalties
from gpt_jax.sampling import SamplingParams, fill_rows

MAX_EOS_IDS = 8


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Validated inputs of one decode: the padded batch, traced settings, and the static output buffer size."""

    rows: int
    top_logprobs: int
    tokens: np.ndarray
    inputs: decode.DecodeInputs
    seed: int
    row_seeds: np.ndarray
    buffer: int


def per_row(
    name: str, value, rows: int, kind: type, low: float, high: float, *, low_open=False, high_open=False
) -> list:
    """Validate a scalar or per-row list of settings; return one value per row."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * rows
    check(len(values) == rows, InputError, f"{name} must be a scalar or a list of {rows} values, got {len(values)}")
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    allowed = f"{kind.__name__} in {lo}{low}, {high}{hi}"
    for v in values:
        ok_type = (
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            if kind is int
            else isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        )
        check(ok_type, InputError, f"{name} must be {allowed}, got {v!r}")
        check(
            math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high),
            InputError,
            f"{name} must be {allowed}, got {v!r}",
        )
    return values


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(x) for x in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    longest = 0
    for x in stops:
        for n in range(min(len(x) - 1, len(text)), longest, -1):
            if text.endswith(x[:n]):
                longest = n
                break
    return longest


def prepare(
    config: ModelConfig,
    mesh,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int] = 64,
    temperature=0.8,
    top_k=0,
    top_p=0.95,
    min_p=0.0,
    seed: int | None = None,
    row_seeds: Sequence[int] | None = None,
    ignore_eos: bool = False,
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    logit_bias: dict[int, float] | Sequence[dict[int, float]] | None = None,
    min_new_tokens: int | Sequence[int] = 0,
    stop_ids: Sequence[Sequence[int]] | None = None,
    n: int = 1,
    top_logprobs: int = 0,
) -> Prepared:
    """Validate every argument (before anything compiles) and build the traced inputs of the decode.

    With n > 1 every prompt (and its per-prompt settings) is repeated n times, as consecutive rows.
    """
    cfg = config
    check(
        isinstance(prompts, (list, tuple)) and len(prompts) > 0,
        InputError,
        "prompts must be a non-empty list of token-id lists",
    )
    rows = len(prompts)
    prompts = [check_ids(cfg, i, p) for i, p in enumerate(prompts)]
    budgets = per_row("max_new_tokens", max_new_tokens, rows, int, 1, cfg.max_seq_len)
    temps = per_row("temperature", temperature, rows, float, 0.0, 1e6)
    top_ks = per_row("top_k", top_k, rows, int, 0, cfg.vocab_size)
    top_ps = per_row("top_p", top_p, rows, float, 0.0, 1.0, low_open=True)
    min_ps = per_row("min_p", min_p, rows, float, 0.0, 1.0)
    reps = per_row("repetition_penalty", repetition_penalty, rows, float, 0.0, 100.0, low_open=True)
    presences = per_row("presence_penalty", presence_penalty, rows, float, -2.0, 2.0)
    frequencies = per_row("frequency_penalty", frequency_penalty, rows, float, -2.0, 2.0)
    min_news = per_row("min_new_tokens", min_new_tokens, rows, int, 0, cfg.max_seq_len)
    biases = check_bias(cfg, logit_bias, rows)
    stop_seqs = check_stop_ids(cfg, stop_ids)
    check(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64,
        InputError,
        f"n must be an integer in [1, 64], got {n!r}",
    )
    check(
        isinstance(top_logprobs, int) and not isinstance(top_logprobs, bool) and 0 <= top_logprobs <= 20,
        InputError,
        f"top_logprobs must be an integer in [0, 20], got {top_logprobs!r}",
    )
    if n > 1:
        repeat = lambda xs: [x for x in xs for _ in range(n)]
        prompts, budgets, temps, top_ks, top_ps, min_ps = map(repeat, (prompts, budgets, temps, top_ks, top_ps, min_ps))
        reps, presences, frequencies, min_news = map(repeat, (reps, presences, frequencies, min_news))
        biases = repeat(biases) if biases is not None else None
        rows *= n
    for i, (p, budget) in enumerate(zip(prompts, budgets)):
        check(
            len(p) + budget <= cfg.max_seq_len,
            InputError,
            f"prompt {i} has {len(p)} tokens; with max_new_tokens={budget} that is {len(p) + budget}, "
            f"more than the "
            f"model's context of {cfg.max_seq_len} tokens",
        )
    if seed is None:
        seed = secrets.randbits(32)
    check(
        isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and 0 <= seed < 2**32,
        InputError,
        f"seed must be an integer in [0, 2**32), got {seed!r}",
    )
    if row_seeds is None:
        row_seeds = list(range(rows))
    row_seeds = per_row("row_seeds", row_seeds, rows, int, 0, 2**31 - 1)
    check(isinstance(ignore_eos, bool), InputError, f"ignore_eos must be True or False, got {ignore_eos!r}")

    data = mesh.shape["data"] if mesh is not None else 1
    batch = left_pad(
        prompts,
        cfg.pad_id,
        length=bucket(max(map(len, prompts)), MIN_LENGTH_BUCKET),
        rows=-(-bucket(rows) // data) * data,
    )
    b = batch.tokens.shape[0]
    eos = [] if ignore_eos else list(cfg.eos_ids)[:MAX_EOS_IDS]
    inputs = decode.DecodeInputs(
        pad_len=batch.pad_len,
        max_new_tokens=fill_rows(budgets, b, np.int32),
        active=batch.active,
        eos_ids=np.array(eos + [-1] * (MAX_EOS_IDS - len(eos)), np.int32),
        stop_seqs=stop_seqs,
        sampling=SamplingParams.make(b, temperature=temps, top_k=top_ks, top_p=top_ps, min_p=min_ps),
        penalties=Penalties.make(
            b,
            cfg.vocab_size,
            repetition_penalty=reps,
            presence_penalty=presences,
            frequency_penalty=frequencies,
            logit_bias=biases,
            min_new_tokens=min_news,
        ),
        pad_id=np.int32(cfg.pad_id),
    )
    return Prepared(
        top_logprobs=top_logprobs,
        rows=rows,
        tokens=batch.tokens,
        inputs=inputs,
        seed=int(seed),
        row_seeds=fill_rows(row_seeds, b, np.int32),
        buffer=bucket(max(budgets), MIN_LENGTH_BUCKET),
    )


def check_ids(config: ModelConfig, i: int, ids, what: str = "prompt") -> list[int]:
    check(
        isinstance(ids, (list, tuple, np.ndarray)),
        InputError,
        f"{what} {i} must be a list of token ids, got {type(ids).__name__}",
    )
    ids = [int(t) if isinstance(t, (int, np.integer)) and not isinstance(t, bool) else t for t in ids]
    check(len(ids) > 0, InputError, f"{what} {i} is empty: give at least one token id")
    v = config.vocab_size
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < v]
    check(not bad, InputError, f"{what} {i} holds token ids outside [0, vocab_size={v}): {bad[:5]}")
    return ids


def check_stop_ids(config: ModelConfig, stop_ids) -> np.ndarray:
    """Up to 8 token sequences of 1..16 ids -> [8, 16] right-aligned, -1 filled."""
    table = np.full((decode.MAX_STOP_SEQUENCES, decode.MAX_STOP_TOKENS), -1, np.int32)
    if stop_ids is None:
        return table
    check(
        isinstance(stop_ids, (list, tuple)) and len(stop_ids) <= decode.MAX_STOP_SEQUENCES,
        InputError,
        f"stop must be a list of at most {decode.MAX_STOP_SEQUENCES} sequences",
    )
    for i, seq in enumerate(stop_ids):
        seq = check_ids(config, i, seq, what="stop sequence")
        check(
            len(seq) <= decode.MAX_STOP_TOKENS,
            InputError,
            f"stop sequence {i} has {len(seq)} tokens; at most {decode.MAX_STOP_TOKENS} are allowed",
        )
        table[i, decode.MAX_STOP_TOKENS - len(seq) :] = seq
    return table


def check_bias(config: ModelConfig, logit_bias, rows: int) -> list[dict[int, float]] | None:
    """One {token id: value in [-100, 100]} dict, or one per row."""
    if logit_bias is None:
        return None
    dicts = list(logit_bias) if isinstance(logit_bias, (list, tuple)) else [logit_bias] * rows
    check(
        len(dicts) == rows and all(isinstance(d, dict) for d in dicts),
        InputError,
        f"logit_bias must be a dict {{token id: value}} or a list of {rows} such dicts",
    )
    v = config.vocab_size
    for d in dicts:
        for token, value in d.items():
            check(
                isinstance(token, (int, np.integer)) and not isinstance(token, bool) and 0 <= token < v,
                InputError,
                f"logit_bias keys must be token ids in [0, vocab_size={v}), got {token!r}",
            )
            check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and -100 <= value <= 100,
                InputError,
                f"logit_bias values must be numbers in [-100, 100], got {value!r} for {token}",
            )
    return dicts
