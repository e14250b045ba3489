"""A call's settings and prompts -> the traced inputs of its decode (`loop.DecodeInputs`), every value checked
before anything compiles (an `InputError` naming the argument, the value and what is allowed).

With n > 1 every prompt (and its per-prompt settings) is repeated n times, as consecutive rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gpt_jax.decoding import loop
from gpt_jax.decoding.batching import MIN_LENGTH_BUCKET, Batch, bucket, left_pad
from gpt_jax.decoding.penalties import Penalties
from gpt_jax.decoding.constraints import device
from gpt_jax.decoding.constraints.automaton import TokenAutomaton
from gpt_jax.decoding.rows import MAX_STOP_SEQUENCES, MAX_STOP_TOKENS, RowConstraints, Rules
from gpt_jax.decoding.sampling import SamplingParams, fill_rows
from gpt_jax.decoding.settings import SEED_BITS, GenerationSettings, is_integer, is_number, repeat_rows, scalar, short
from gpt_jax.decoding.speculation.proposer import Proposer
from gpt_jax.errors import InputError, check
from gpt_jax.model.config import ModelConfig

MAX_EOS_IDS = 8
MAX_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Validated inputs of one decode: traced inputs (padded batch included), and the static output sizes."""

    rows: int  # rows the caller asked for (prompts x n); the batch may hold filler rows after them
    inputs: loop.DecodeInputs
    seed: int
    buffer: int  # output buffer M (static)
    top_logprobs: int  # alternatives recorded per token (static)
    automata: tuple | None = None  # each prompt's compiled constraint (None: free), None when none has one


def prepare(
    config: ModelConfig,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    data_axis: int = 1,
    scoring: bool = False,
    automata: Sequence[TokenAutomaton | None] | None = None,
):
    """Validate every setting and build the traced inputs of the decode. `data_axis`: the batch is padded to a
    multiple of the mesh's data axis. `scoring`: the prompts are only prefilled and scored, no token is generated
    (the budget is not counted), so a prompt may fill the context. `automata`: each prompt's compiled constraint
    (None: free), or None when no row is constrained."""
    s = check_call(settings.with_seed())
    check(
        isinstance(prompts, (list, tuple)) and 0 < len(prompts) <= MAX_ROWS,
        InputError,
        f"prompts must be a non-empty list of at most {MAX_ROWS} token-id lists",
    )
    prompts = [check_ids(config, i, p) for i, p in enumerate(prompts)]
    values = s.per_row_values(config, len(prompts))
    biases = check_bias(config, s.logit_bias, len(prompts))
    stop_seqs = check_stop_ids(config, s.stop_ids)
    for r, (low, high) in enumerate(zip(values["min_new_tokens"], values["max_new_tokens"])):
        check(low <= high, InputError, f"min_new_tokens={low} is more than max_new_tokens={high} (row {r})")
    prompts = repeat_rows(prompts, s.n)
    values = {name: repeat_rows(v, s.n) for name, v in values.items()}
    biases = repeat_rows(biases, s.n) if biases is not None else None
    rows = len(prompts)
    for i, (p, budget) in enumerate(zip(prompts, values["max_new_tokens"])):
        check(
            len(p) <= config.max_seq_len,
            InputError,
            f"prompt {i // s.n} has {len(p)} tokens, more than the model's context of {config.max_seq_len} tokens",
        )
        check(
            scoring or len(p) + budget <= config.max_seq_len,
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
    inputs = loop.DecodeInputs(
        tokens=batch.tokens,
        pad_len=batch.pad_len,
        seed=np.uint32(s.seed),
        row_seeds=fill_rows(row_seeds, batch.tokens.shape[0], np.int32),
        active=batch.active,
        rules=rules_of(config, batch, values, biases, stop_seqs, s.ignore_eos),
    )
    if automata is not None:
        constraints = row_constraints(repeat_rows(list(automata), s.n), batch.tokens.shape[0], config.vocab_size)
        inputs = inputs.replace(rules=inputs.rules.replace(constraints=constraints))
    buffer = bucket(max(values["max_new_tokens"]), MIN_LENGTH_BUCKET)
    automata = None if automata is None else tuple(automata)
    return Prepared(rows, inputs, int(s.seed), buffer, int(s.top_logprobs), automata)


def row_constraints(automata: list, rows: int, vocab_size: int) -> RowConstraints:
    """The stacked automata of a batch's rows (repeats share one copy) and each row's initial state; filler rows
    are free."""
    distinct = list({id(a): a for a in automata if a is not None}.values())
    table, starts = device.stack(distinct, vocab_size)
    first = {id(a): q for a, q in zip(distinct, starts)}
    start = [first[id(a)] if a is not None else device.FREE for a in automata]
    return RowConstraints(table=table, start=np.array(start + [device.FREE] * (rows - len(start)), np.int32))


def check_call(s: GenerationSettings) -> GenerationSettings:
    """The settings of the call as a whole (n, top_logprobs, seed, ignore_eos, speculative), checked."""
    s = dataclasses.replace(s, seed=scalar(s.seed), n=scalar(s.n), top_logprobs=scalar(s.top_logprobs))
    check(is_integer(s.n) and 1 <= s.n <= 64, InputError, f"n must be an integer in [1, 64], got {short(s.n)}")
    check(
        is_integer(s.top_logprobs) and 0 <= s.top_logprobs <= 20,
        InputError,
        f"top_logprobs must be an integer in [0, 20], got {short(s.top_logprobs)}",
    )
    check(
        is_integer(s.seed) and 0 <= s.seed < 2**SEED_BITS,
        InputError,
        f"seed must be an integer in [0, 2**{SEED_BITS}), got {short(s.seed)}",
    )
    check(
        isinstance(s.ignore_eos, (bool, np.bool_)),
        InputError,
        f"ignore_eos must be True or False, got {s.ignore_eos!r}",
    )
    check(
        s.speculative is None or isinstance(s.speculative, Proposer),
        InputError,
        f"speculative must be None, gpt_jax.PromptLookup(...) or gpt_jax.DraftModel(...) (a speculation.Proposer), "
        f"got {short(s.speculative)}",
    )
    return s


def rules_of(config: ModelConfig, batch: Batch, values: dict, biases, stop_seqs, ignore_eos: bool) -> Rules:
    """The per-row rules of a batch from its checked per-row values (filler rows take the first row's)."""
    b = batch.tokens.shape[0]
    sampling = SamplingParams.make(
        b, temperature=values["temperature"], top_k=values["top_k"], top_p=values["top_p"], min_p=values["min_p"]
    )
    penalties = Penalties.make(
        b,
        config.vocab_size,
        repetition_penalty=values["repetition_penalty"],
        presence_penalty=values["presence_penalty"],
        frequency_penalty=values["frequency_penalty"],
        logit_bias=biases,
        min_new_tokens=values["min_new_tokens"],
    )
    return Rules(
        sampling=sampling,
        penalties=penalties,
        max_new_tokens=fill_rows(values["max_new_tokens"], b, np.int32),
        eos_ids=eos_table(config, ignore_eos),
        stop_seqs=np.broadcast_to(stop_seqs, (b, *stop_seqs.shape)).copy(),
        pad_id=np.int32(config.pad_id),
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
        f"{what} {i} holds values that are not token ids, outside [0, vocab_size={v}): {short(bad[:5])}",
    )
    return [int(t) for t in ids]


def check_stop_ids(config: ModelConfig, stop_ids) -> np.ndarray:
    """Up to MAX_STOP_SEQUENCES (16) token sequences of 1..MAX_STOP_TOKENS (16) ids -> [16, 16] right-aligned, -1
    filled."""
    table = np.full((MAX_STOP_SEQUENCES, MAX_STOP_TOKENS), -1, np.int32)
    if stop_ids is None:
        return table
    check(
        isinstance(stop_ids, (list, tuple)) and len(stop_ids) <= MAX_STOP_SEQUENCES,
        InputError,
        f"stop must be a list of at most {MAX_STOP_SEQUENCES} sequences",
    )
    for i, seq in enumerate(stop_ids):
        seq = check_ids(config, i, seq, what="stop sequence")
        check(
            len(seq) <= MAX_STOP_TOKENS,
            InputError,
            f"stop sequence {i} has {len(seq)} tokens; at most {MAX_STOP_TOKENS} are allowed",
        )
        table[i, MAX_STOP_TOKENS - len(seq) :] = seq
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
                f"logit_bias keys must be token ids in [0, vocab_size={v}), got {short(token)}",
            )
            ok = is_number(value)
            try:
                ok = ok and -100 <= value <= 100
            except OverflowError:
                ok = False
            check(ok, InputError, f"logit_bias values must be numbers in [-100, 100], got {short(value)} for {token}")
    return [{int(k): float(x) for k, x in d.items()} for d in dicts]
