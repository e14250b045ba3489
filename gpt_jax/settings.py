"""Every generation setting, its default and its allowed values, stated once; and turning a call's settings into
the traced inputs of the decode.

`GenerationSettings` is the one place a default is written: `Generator.generate`/`generate_ids`/`stream`, the
command line (its flags are built from the fields) and multi-host generation all read it. Every setting may be a
scalar or one value per prompt where it says so; every check runs before anything is compiled and raises an
`InputError` naming the argument, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpt_jax import loop
from gpt_jax.batching import MIN_LENGTH_BUCKET, bucket, left_pad
from gpt_jax.config import ModelConfig
from gpt_jax.errors import InputError, check
from gpt_jax.penalties import Penalties
from gpt_jax.speculative import DraftModel, PromptLookup, Reference
from gpt_jax.sampling import SamplingParams, fill_rows

MAX_EOS_IDS = 8
MAX_ROWS = 4096
SEED_BITS = 32
ALIASES = {  # names other libraries use for a setting, so a slip gets the right suggestion
    "max_tokens": "max_new_tokens",
    "max_length": "max_new_tokens",
    "num_return_sequences": "n",
    "logprobs": "top_logprobs",
    "stop_sequences": "stop",
    "random_seed": "seed",
    "do_sample": "temperature",
}


def _setting(default, help: str, kind: type | None = None, low=None, high=None, open_low=False, cli=True):
    """A field of `GenerationSettings`. kind/low/high: a per-row numeric setting and its range (high may name a
    config field, e.g. "max_seq_len"); cli: the command line has a flag for it."""
    meta = {"help": help, "kind": kind, "low": low, "high": high, "open_low": open_low, "cli": cli}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """The settings of one generate call. Per-row settings take a scalar or one value per prompt."""

    max_new_tokens: Any = _setting(64, "tokens to generate per row, at most", int, 1, "max_seq_len")
    temperature: Any = _setting(0.8, "0 means greedy", float, 0.0, 1e6)
    top_k: Any = _setting(0, "keep the k most likely tokens; 0 means off", int, 0, "vocab_size")
    top_p: Any = _setting(0.95, "keep the smallest set of probability >= p; 1 means off", float, 0.0, 1.0, True)
    min_p: Any = _setting(0.0, "drop tokens below min_p x the top probability; 0 means off", float, 0.0, 1.0)
    repetition_penalty: Any = _setting(1.0, "divide logits of seen tokens; 1 means off", float, 0.0, 100.0, True)
    presence_penalty: Any = _setting(0.0, "subtract from generated tokens' logits; 0 means off", float, -2.0, 2.0)
    frequency_penalty: Any = _setting(0.0, "subtract count x this; 0 means off", float, -2.0, 2.0)
    min_new_tokens: Any = _setting(0, "EOS is masked until this many tokens", int, 0, "max_seq_len")
    seed: int | None = _setting(None, "default: a fresh seed, reported with the result")
    row_seeds: Any = _setting(None, "per-row seeds (default: the row index)", int, 0, 2**31 - 1, cli=False)
    ignore_eos: bool = _setting(False, "always generate max_new_tokens tokens")
    logit_bias: Any = _setting(None, "{token id: value in [-100, 100]}, or one dict per prompt", cli=False)
    stop: Any = _setting(None, "a stop string (repeat for several)")
    stop_ids: Any = _setting(None, "token-id stop sequences (generate_ids)", cli=False)
    n: int = _setting(1, "samples per prompt")
    top_logprobs: int = _setting(0, "record the k most likely alternatives per token", cli=False)
    speculative: Any = _setting(None, "PromptLookup(...) or DraftModel(...): same output, fewer passes", cli=False)

    @classmethod
    def of(cls, settings: dict[str, Any], defaults: dict[str, Any] | None = None) -> GenerationSettings:
        """Keyword arguments of a public call -> settings, over `defaults` (a checkpoint's own, e.g. from its
        generation_config.json); an unknown name is an InputError with a suggestion."""
        names = [f.name for f in dataclasses.fields(cls)]
        for name in settings:
            if name not in names:
                close = ALIASES.get(name) or next(iter(difflib.get_close_matches(name, names, 1)), None)
                hint = f"; did you mean {close!r}?" if close else ""
                raise InputError(f"unknown setting {name!r}{hint} (settings: {', '.join(names)})")
        return cls(**{**(defaults or {}), **settings})

    def with_seed(self) -> GenerationSettings:
        """These settings with a seed: the given one, or a fresh one (returned with the result, so a run repeats)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=draw_seed())

    def per_row_values(self, config: ModelConfig, rows: int) -> dict[str, list]:
        """Each per-row numeric setting checked and expanded to `rows` values (row_seeds only when given)."""
        out = {}
        for f in dataclasses.fields(self):
            meta = f.metadata
            if meta["kind"] is None or (f.name == "row_seeds" and self.row_seeds is None):
                continue
            high = getattr(config, meta["high"]) if isinstance(meta["high"], str) else meta["high"]
            out[f.name] = per_row(
                f.name, getattr(self, f.name), rows, meta["kind"], meta["low"], high, meta["open_low"]
            )
        return out


def draw_seed() -> int:
    """A fresh seed in [0, 2**32): the only place one is drawn."""
    return secrets.randbits(SEED_BITS)


def repeat_rows(items: Sequence, n: int) -> list:
    """Each item n times, consecutively: row r of an n-sample call belongs to prompt r // n."""
    return [x for x in items for _ in range(n)]


def is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v) -> bool:
    return is_integer(v) or isinstance(v, (float, np.floating))


def _scalar(v):
    """A numpy 0-d array stands for its value."""
    return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v


def per_row(name: str, value, rows: int, kind: type, low: float, high: float, low_open: bool = False) -> list:
    """Validate a scalar or per-row list of settings; return one Python value per row."""
    value = _scalar(value)
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * rows
    check(len(values) == rows, InputError, f"{name} must be a scalar or a list of {rows} values, got {len(values)}")
    allowed = f"{kind.__name__} in {'(' if low_open else '['}{low}, {high}]"
    out = []
    for v in map(_scalar, values):
        ok = is_integer(v) if kind is int else is_number(v)
        try:
            ok = ok and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
        except OverflowError:  # an integer too large for a float
            ok = False
        check(ok, InputError, f"{name} must be {allowed}, got {_short(v)}")
        out.append(kind(v))
    return out


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Validated inputs of one decode: traced inputs (padded batch included), and the static output sizes."""

    rows: int  # rows the caller asked for (prompts x n); the batch may hold filler rows after them
    inputs: loop.DecodeInputs
    seed: int
    buffer: int  # output buffer M (static)
    top_logprobs: int  # alternatives recorded per token (static)


def prepare(config: ModelConfig, prompts: Sequence[Sequence[int]], settings: GenerationSettings, data_axis: int = 1):
    """Validate every setting (before anything compiles) and build the traced inputs of the decode.

    With n > 1 every prompt (and its per-prompt settings) is repeated n times, as consecutive rows. `data_axis`:
    the batch is padded to a multiple of the mesh's data axis.
    """
    s = settings.with_seed()
    s = dataclasses.replace(s, seed=_scalar(s.seed), n=_scalar(s.n), top_logprobs=_scalar(s.top_logprobs))
    check(
        isinstance(prompts, (list, tuple)) and 0 < len(prompts) <= MAX_ROWS,
        InputError,
        f"prompts must be a non-empty list of at most {MAX_ROWS} token-id lists",
    )
    check(is_integer(s.n) and 1 <= s.n <= 64, InputError, f"n must be an integer in [1, 64], got {_short(s.n)}")
    check(
        is_integer(s.top_logprobs) and 0 <= s.top_logprobs <= 20,
        InputError,
        f"top_logprobs must be an integer in [0, 20], got {_short(s.top_logprobs)}",
    )
    check(
        is_integer(s.seed) and 0 <= s.seed < 2**SEED_BITS,
        InputError,
        f"seed must be an integer in [0, 2**{SEED_BITS}), got {_short(s.seed)}",
    )
    check(
        isinstance(s.ignore_eos, (bool, np.bool_)),
        InputError,
        f"ignore_eos must be True or False, got {s.ignore_eos!r}",
    )
    check(
        s.speculative is None or isinstance(s.speculative, (PromptLookup, DraftModel, Reference)),
        InputError,
        f"speculative must be None, gpt_jax.PromptLookup(...) or gpt_jax.DraftModel(...), got {_short(s.speculative)}",
    )
    prompts = [check_ids(config, i, p) for i, p in enumerate(prompts)]
    rows = len(prompts)
    values = s.per_row_values(config, rows)
    biases = check_bias(config, s.logit_bias, rows)
    stop_seqs = check_stop_ids(config, s.stop_ids)
    for r, (low, high) in enumerate(zip(values["min_new_tokens"], values["max_new_tokens"])):
        check(low <= high, InputError, f"min_new_tokens={low} is more than max_new_tokens={high} (row {r})")
    prompts = repeat_rows(prompts, s.n)
    values = {name: repeat_rows(v, s.n) for name, v in values.items()}
    biases = repeat_rows(biases, s.n) if biases is not None else None
    rows *= s.n
    for i, (p, budget) in enumerate(zip(prompts, values["max_new_tokens"])):
        check(
            len(p) + budget <= config.max_seq_len,
            InputError,
            f"prompt {i // s.n} has {len(p)} tokens; with max_new_tokens={budget} that is {len(p) + budget}, "
            f"more than the model's context of {config.max_seq_len} tokens",
        )
    row_seeds = values.get("row_seeds", list(range(rows)))
    check(len(row_seeds) == rows, InputError, f"row_seeds must hold one seed per row ({rows}), got {len(row_seeds)}")
    batch = left_pad(
        prompts,
        config.pad_id,
        length=bucket(max(map(len, prompts)), MIN_LENGTH_BUCKET),
        rows=-(-bucket(rows) // data_axis) * data_axis,
    )
    b = batch.tokens.shape[0]
    inputs = loop.DecodeInputs(
        tokens=batch.tokens,
        pad_len=batch.pad_len,
        seed=np.uint32(s.seed),
        row_seeds=fill_rows(row_seeds, b, np.int32),
        max_new_tokens=fill_rows(values["max_new_tokens"], b, np.int32),
        active=batch.active,
        eos_ids=eos_table(config, s.ignore_eos),
        stop_seqs=stop_seqs,
        sampling=SamplingParams.make(
            b, temperature=values["temperature"], top_k=values["top_k"], top_p=values["top_p"], min_p=values["min_p"]
        ),
        penalties=Penalties.make(
            b,
            config.vocab_size,
            repetition_penalty=values["repetition_penalty"],
            presence_penalty=values["presence_penalty"],
            frequency_penalty=values["frequency_penalty"],
            logit_bias=biases,
            min_new_tokens=values["min_new_tokens"],
        ),
        pad_id=np.int32(config.pad_id),
    )
    return Prepared(
        rows=rows,
        inputs=inputs,
        seed=int(s.seed),
        buffer=bucket(max(values["max_new_tokens"]), MIN_LENGTH_BUCKET),
        top_logprobs=int(s.top_logprobs),
    )


def eos_table(config: ModelConfig, ignore_eos: bool = False) -> np.ndarray:
    """[8] the model's EOS ids (none with ignore_eos), -1 filled."""
    eos = [] if ignore_eos else list(config.eos_ids)[:MAX_EOS_IDS]
    return np.array(eos + [-1] * (MAX_EOS_IDS - len(eos)), np.int32)


def check_ids(config: ModelConfig, i: int, ids, what: str = "prompt") -> list[int]:
    """A list (tuple, 1-d integer array) of ids in [0, vocab_size); booleans are not ids."""
    ok_array = isinstance(ids, np.ndarray) and ids.ndim == 1 and (ids.dtype.kind in "iu" or ids.size == 0)
    check(
        isinstance(ids, (list, tuple)) or ok_array,
        InputError,
        f"{what} {i} must be a list of token ids, got {type(ids).__name__}"
        + (f" of dtype {ids.dtype} and {ids.ndim} axes" if isinstance(ids, np.ndarray) else ""),
    )
    check(len(ids) > 0, InputError, f"{what} {i} is empty: give at least one token id")
    v = config.vocab_size
    bad = [t for t in ids if not is_integer(t) or not 0 <= t < v]
    check(
        not bad,
        InputError,
        f"{what} {i} holds values that are not token ids, outside [0, vocab_size={v}): {_short(bad[:5])}",
    )
    return [int(t) for t in ids]


def check_stop_ids(config: ModelConfig, stop_ids) -> np.ndarray:
    """Up to 8 token sequences of 1..16 ids -> [8, 16] right-aligned, -1 filled."""
    table = np.full((loop.MAX_STOP_SEQUENCES, loop.MAX_STOP_TOKENS), -1, np.int32)
    if stop_ids is None:
        return table
    check(
        isinstance(stop_ids, (list, tuple)) and len(stop_ids) <= loop.MAX_STOP_SEQUENCES,
        InputError,
        f"stop must be a list of at most {loop.MAX_STOP_SEQUENCES} sequences",
    )
    for i, seq in enumerate(stop_ids):
        seq = check_ids(config, i, seq, what="stop sequence")
        check(
            len(seq) <= loop.MAX_STOP_TOKENS,
            InputError,
            f"stop sequence {i} has {len(seq)} tokens; at most {loop.MAX_STOP_TOKENS} are allowed",
        )
        table[i, loop.MAX_STOP_TOKENS - len(seq) :] = seq
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
                is_integer(token) and 0 <= token < v,
                InputError,
                f"logit_bias keys must be token ids in [0, vocab_size={v}), got {_short(token)}",
            )
            ok = is_number(value)
            try:
                ok = ok and -100 <= value <= 100
            except OverflowError:
                ok = False
            check(ok, InputError, f"logit_bias values must be numbers in [-100, 100], got {_short(value)} for {token}")
    return [{int(k): float(x) for k, x in d.items()} for d in dicts]
