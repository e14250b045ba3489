"""`gpt-jax bench --structured`: what a constraint costs, in the same run on the same machine.

  speed    - decode tokens/s constrained against unconstrained at batches 1 and 8 on the GPT-2-small shape (random
             weights, fp32) over a byte-level BPE of --vocab entries trained here, for a regex and a nested JSON
             schema. Both constraints are unbounded (words; JSON Lines: objects of the schema, one per line) and EOS
             is ignored, so every row decodes --tokens tokens constrained or not (checked). The runs alternate
             (free, regex, schema; --rounds times) and the best of each is kept, so drift on a shared machine
             falls on all three.
  server   - the serving engine (8 slots) on the same model: 8 free requests with no constraint table
             (--constraint-states 0), the same with the default table (every slot's step then reads it), and 8
             requests under the regex; each request generates --tokens tokens (min = max tokens).
  automata - each constraint's token automaton for the bundled model's vocabulary, the --vocab BPE and a
             --large-vocab one: states, compile seconds (cache cleared first) and device bytes.

The byte-level BPEs are trained on --corpus (default: the bundled 200 kB sample of the Shakespeare corpus) plus
300,000 seeded pseudo-words, so any size up to 131,072 is reached. Prints a table and writes --output (JSON).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import gpt_jax
from gpt_jax.bench.corpus import add_corpus_flag, corpus_file
from gpt_jax.bench.serving import machine
from gpt_jax.decoding.constraints import automaton
from gpt_jax.decoding.constraints.spec import row_constraints
from gpt_jax.decoding.generator import Generator
from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.model.presets import GPT2_SMALL
from gpt_jax.serving.constraint_pool import DEFAULT_STATES
from gpt_jax.serving.engine import Engine
from gpt_jax.serving.requests import Outcome, Request
from gpt_jax.text.hf_tokenizer import HFTokenizer
from gpt_jax.util.argparsing import OneLineParser, positive_int
from gpt_jax.util.output_files import check_output_file, write_text_atomically

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "lines": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
        "friend": {"type": "object", "properties": {"name": {"type": "string"}, "house": {"enum": ["M", "C"]}}},
    },
    "required": ["name", "age", "lines"],
}
CONSTRAINTS = {
    "regex": {"regex": r"([a-z]+[,.]? ){1,}"},
    "json_schema": {"regex": "(?:" + row_constraints(1, json_schema=SCHEMA)[0].regex + "\n)+"},  # JSON Lines
}
LETTERS = "etaoinshrdlucmfwypvbgkjqxz"  # pseudo-words draw letters at English frequencies
FREQUENCIES = [127, 91, 82, 75, 70, 67, 63, 61, 60, 43, 40, 28, 28, 24, 24, 20, 20, 19, 15, 10, 8, 2, 2, 1, 1, 1]


def corpus_text(corpus: Path) -> list[str]:
    """The corpus and 300,000 seeded pseudo-words (each twice, so BPE may merge them)."""
    rng = random.Random(0)
    words = ["".join(rng.choices(LETTERS, FREQUENCIES, k=rng.randint(3, 9))) for _ in range(300_000)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return [corpus.read_text(encoding="utf-8")] + lines * 2


def byte_level_tokenizer(vocab: int, directory: Path, corpus: Path):
    """(tokenizer, its size): a byte-level BPE of `vocab` entries, id 0 the end-of-text token."""
    import tokenizers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus_text(corpus), vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                         show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save(str(directory / "tokenizer.json"))
    cfg = GPT2_SMALL.replace(vocab_size=bpe.get_vocab_size(), bos_id=0, eos_ids=(0,), pad_id=0)
    return HFTokenizer.from_directory(directory, cfg), cfg


def timed(gen, prompts, new_tokens: int, constraint: dict) -> float:
    began = time.perf_counter()
    out = gen.generate_ids(prompts, max_new_tokens=new_tokens, temperature=1.0, seed=0, ignore_eos=True, **constraint)
    seconds = time.perf_counter() - began
    assert all(len(ids) == new_tokens for ids in out.token_ids), [len(ids) for ids in out.token_ids]
    return seconds


def speed(gen, batch: int, new_tokens: int, rounds: int) -> list[dict]:
    prompts = [[11 + r, 12, 13] for r in range(batch)]
    configs = {"free": {}, **CONSTRAINTS}
    for constraint in configs.values():
        timed(gen, prompts, new_tokens, constraint)  # compile
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(rounds):
        for name, constraint in configs.items():
            best[name] = min(best[name], timed(gen, prompts, new_tokens, constraint))
    free = batch * new_tokens / best["free"]
    rows = []
    for kind in CONSTRAINTS:
        constrained = batch * new_tokens / best[kind]
        rows.append({"batch": batch, "constraint": kind, "free_tok_s": round(free, 1),
                     "constrained_tok_s": round(constrained, 1), "cost": round(free / constrained - 1, 4)})  # fmt: skip
        print(f"batch {batch} {kind:>12}: {free:.1f} tok/s free, {constrained:.1f} constrained "
              f"({100 * (free / constrained - 1):+.1f}% per token)", flush=True)  # fmt: skip
    return rows


def served(engine, preps) -> float:
    """Seconds until every request has finished."""
    outcomes = [Outcome(prep.rows) for prep in preps]
    began = time.perf_counter()
    for prep, outcome in zip(preps, outcomes):
        engine.submit(Request(prep, outcome.on_event))
    for outcome in outcomes:
        outcome.wait()
        assert outcome.error is None, outcome.error
    return time.perf_counter() - began


def server_speed(gen, new_tokens: int, rounds: int, slots: int = 8) -> list[dict]:
    """Engine tokens/s for free requests without and with the constraint table, and for constrained ones."""
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "temperature": 1.0, "seed": 0}
    prompts = [[11 + r, 12, 13] for r in range(slots)]
    cases = [("free, no table", 0, {}), ("free, table", DEFAULT_STATES, {}),
             ("regex, table", DEFAULT_STATES, CONSTRAINTS["regex"])]  # fmt: skip
    engines = {states: Engine(gen, slots_count=slots, max_len=128, constraint_states=states, prefix_cache_gb=0)
               for states in (0, DEFAULT_STATES)}  # fmt: skip
    preps = [[engines[states].prepare(ids, GenerationSettings.of({**settings, **c})) for ids in prompts]
             for _, states, c in cases]  # fmt: skip
    best = [float("inf")] * len(cases)
    try:
        for i, (_, states, _) in enumerate(cases):
            served(engines[states], preps[i])  # compile
        for _ in range(rounds):
            for i, (_, states, _) in enumerate(cases):
                best[i] = min(best[i], served(engines[states], preps[i]))
    finally:
        for engine in engines.values():
            engine.close()
    rows = []
    for (name, states, _), seconds in zip(cases, best):
        rows.append({"case": name, "constraint_states": states, "tok_s": round(slots * new_tokens / seconds, 1)})
        print(f"server {name:>15}: {rows[-1]['tok_s']:.1f} tok/s", flush=True)
    return rows


def automaton_costs(tokenizer, eos_ids, name: str) -> list[dict]:
    rows = []
    for kind, constraint in CONSTRAINTS.items():
        regex = row_constraints(1, **constraint)[0].regex
        automaton.clear_cache()
        a = automaton.compile_automaton(regex, tokenizer, eos_ids)
        rows.append({"vocabulary": name, "vocab_size": tokenizer.vocab_size, "constraint": kind, "states": a.states,
                     "compile_s": round(a.compile_seconds, 3), "device_mib": round(a.nbytes / 2**20, 3)})  # fmt: skip
        print(f"{name:>12} V={tokenizer.vocab_size:>6} {kind:>12}: {a.states:>5} states, compile "
              f"{a.compile_seconds:.2f} s, {a.nbytes / 2**20:.2f} MiB", flush=True)  # fmt: skip
    return rows


def parser() -> OneLineParser:
    p = OneLineParser(prog="gpt-jax bench --structured", description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=positive_int, default=50257, help="the timed model's BPE size (default 50257)")
    p.add_argument("--large-vocab", type=positive_int, default=131072, help="compile-only BPE size (default 131072)")
    p.add_argument("--tokens", type=positive_int, default=64, help="new tokens per row (default 64)")
    p.add_argument("--rounds", type=positive_int, default=3, help="timed runs of each configuration (default 3)")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    add_corpus_flag(p)
    p.add_argument("--output", default="benchmarks/results/structured.json", help="where to write the results")
    return p


def run(args, corpus: Path) -> dict:
    bundled = gpt_jax.load()
    costs = automaton_costs(bundled.tokenizer, bundled.config.eos_ids, "bundled")
    with tempfile.TemporaryDirectory() as d:
        large, cfg = byte_level_tokenizer(args.large_vocab, Path(d) / "large", corpus)
        costs += automaton_costs(large, cfg.eos_ids, "byte-level")
        tokenizer, cfg = byte_level_tokenizer(args.vocab, Path(d) / "timed", corpus)
    costs += automaton_costs(tokenizer, cfg.eos_ids, "byte-level")
    gen = Generator.from_config(cfg, tokenizer, key=0)
    rows = [row for batch in args.batches for row in speed(gen, batch, args.tokens, args.rounds)]
    server = server_speed(gen, args.tokens, args.rounds)
    return {"machine": machine(), "model": "GPT-2-small shape, random weights, fp32", "vocab_size": cfg.vocab_size,
            "new_tokens": args.tokens, "rounds": args.rounds, "speed": rows, "server": server,
            "automata": costs}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_output_file(args.output, "--output")
    corpus = corpus_file(args.corpus)  # both checked before anything runs
    report = run(args, corpus)
    write_text_atomically(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0
