"""Every generation setting, its default and its allowed values, stated once (`prepare.py` turns a call's settings
into the traced inputs of its decode).

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

from gpt_jax.decoding.constraints.spec import row_constraints
from gpt_jax.errors import InputError, check
from gpt_jax.model.config import ModelConfig

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
    regex: Any = _setting(None, "the generated text fully matches this regex (or one per prompt)", cli=False)
    choice: Any = _setting(None, "the generated text is one of these strings (or a list per prompt)", cli=False)
    json_schema: Any = _setting(None, "the text is JSON valid under this schema (dict, JSON text, pydantic)", cli=False)
    json_object: Any = _setting(None, "True: the text is a JSON object (or one value per prompt)", cli=False)

    def constraints(self, rows: int):
        """Each prompt's constraint (`constraints.spec`), or None when no row is constrained."""
        return row_constraints(
            rows, regex=self.regex, choice=self.choice, json_schema=self.json_schema, json_object=self.json_object
        )

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


def scalar(v):
    """A numpy 0-d array stands for its value."""
    return v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v


def per_row(name: str, value, rows: int, kind: type, low: float, high: float, low_open: bool = False) -> list:
    """Validate a scalar or per-row list of settings; return one Python value per row."""
    value = scalar(value)
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * rows
    check(len(values) == rows, InputError, f"{name} must be a scalar or a list of {rows} values, got {len(values)}")
    allowed = f"{kind.__name__} in {'(' if low_open else '['}{low}, {high}]"
    out = []
    for v in map(scalar, values):
        ok = is_integer(v) if kind is int else is_number(v)
        try:
            ok = ok and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
        except OverflowError:  # an integer too large for a float
            ok = False
        check(ok, InputError, f"{name} must be {allowed}, got {short(v)}")
        out.append(kind(v))
    return out


def short(v) -> str:
    """A value as an error message shows it (cut at 60 characters)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
