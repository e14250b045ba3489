"""What a constraint costs: decode tokens/s constrained against unconstrained, in the same run, at batch 1 and 8 on
the GPT-2-small shape (random weights) over a byte-level BPE trained here on the Shakespeare corpus, for a regex
and a nested JSON schema; and each constraint's automaton compile time, states and device bytes for that
vocabulary and the bundled model's.

    python benchmarks/structured.py [--vocab 50257] [--tokens 64]

Both constraints are unbounded (a list of words; JSON Lines: objects of the nested schema, one per line), and EOS
is ignored, so every row decodes the same number of tokens constrained or not (checked). Prints a table and writes benchmarks/results/structured.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tokenizers  # noqa: E402

import gpt_jax  # noqa: E402
from gpt_jax.bench.serving import machine  # noqa: E402
from gpt_jax.decoding.constraints import automaton  # noqa: E402
from gpt_jax.decoding.constraints.spec import row_constraints  # noqa: E402
from gpt_jax.decoding.generator import Generator  # noqa: E402
from gpt_jax.model.presets import GPT2_SMALL  # noqa: E402
from gpt_jax.text.hf_tokenizer import HFTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "lines": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
        "friend": {"type": "object", "properties": {"name": {"type": "string"}, "house": {"enum": ["M", "C"]}}},
    },
    "required": ["name", "age", "lines"],
}
CONSTRAINTS = {
    "regex": {"regex": r"([a-z]+[,.]? ){1,}"},
    "json_schema": {"regex": "(?:" + row_constraints(1, json_schema=SCHEMA)[0].regex + "\n)+"},  # JSON Lines
}


def byte_level_model(vocab: int, directory: Path) -> Generator:
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train([str(ROOT / "data" / "shakespeare.txt")], vocab_size=vocab, min_frequency=2,
              special_tokens=["<|endoftext|>"])  # fmt: skip
    bpe.save(str(directory / "tokenizer.json"))
    cfg = GPT2_SMALL.replace(vocab_size=bpe.get_vocab_size(), bos_id=0, eos_ids=(0,), pad_id=0)
    return Generator.from_config(cfg, HFTokenizer.from_directory(directory, cfg), key=0)


def tokens_per_second(gen, batch: int, new_tokens: int, constraint: dict, runs: int = 3) -> float:
    prompts = [[11 + r, 12, 13] for r in range(batch)]
    kw = dict(max_new_tokens=new_tokens, temperature=1.0, seed=0, ignore_eos=True, **constraint)
    gen.generate_ids(prompts, **kw)  # compile
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        out = gen.generate_ids(prompts, **kw)
        best = min(best, time.perf_counter() - began)
    assert all(len(ids) == new_tokens for ids in out.token_ids), [len(ids) for ids in out.token_ids]
    return sum(map(len, out.token_ids)) / best


def automaton_costs(gen, name: str) -> list[dict]:
    rows = []
    for kind, constraint in CONSTRAINTS.items():
        regex = row_constraints(1, **constraint)[0].regex
        automaton._AUTOMATA.clear()
        a = automaton.compile_automaton(regex, gen.tokenizer, gen.config.eos_ids)
        rows.append({"vocabulary": name, "vocab_size": gen.config.vocab_size, "constraint": kind, "states": a.states,
                     "compile_s": round(a.compile_seconds, 3), "device_mib": round(a.nbytes / 2**20, 3)})  # fmt: skip
        print(f"{name:>12} V={gen.config.vocab_size:>6} {kind:>12}: {a.states:>5} states, compile "
              f"{a.compile_seconds:.2f} s, {a.nbytes / 2**20:.2f} MiB")  # fmt: skip
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        gen = byte_level_model(args.vocab, Path(d))
    costs = automaton_costs(gpt_jax.load(), "bundled") + automaton_costs(gen, "byte-level")
    speed = []
    for batch in (1, 8):
        free = tokens_per_second(gen, batch, args.tokens, {})
        for kind, constraint in CONSTRAINTS.items():
            constrained = tokens_per_second(gen, batch, args.tokens, constraint)
            speed.append({"batch": batch, "constraint": kind, "free_tok_s": round(free, 1),
                          "constrained_tok_s": round(constrained, 1),
                          "cost": round(free / constrained - 1, 4)})  # fmt: skip
            print(f"batch {batch} {kind:>12}: {free:.1f} tok/s free, {constrained:.1f} constrained "
                  f"({100 * (free / constrained - 1):+.1f}% per token)")  # fmt: skip
    out = {"machine": machine(), "model": "GPT-2-small shape, random weights", "vocab_size": gen.config.vocab_size,
           "new_tokens": args.tokens, "speed": speed, "automata": costs}  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "structured.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
