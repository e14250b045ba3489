"""`gpt-jax bench --speculative`: speculative decoding against plain decoding, in the same run on the same machine.

Parts (each prints a table row as it goes; all of it lands in one JSON file):
  ceiling   - random-weight GPT-2-small and Llama-small shapes, fp32, greedy, batches 1 and 8: a proposer that
              offers the model's own continuation (from a plain run of the same prompts), each token replaced by a
              wrong one with probability 1 - a, for a in {1.0, 0.8, 0.5, 0.0} and k in {2, 4, 8}. Tokens/s, the
              ratio to plain decoding, and tokens/s as a fraction of the plain bandwidth roofline (batch x read
              bandwidth / weight bytes): above 100% is what speculation is for.
  lookup    - prompt lookup (k = 4, n-grams up to 3): the bundled model on free generation and on a prompt that
              it should quote, and the random GPT-2-small model, whose greedy output runs into repeats.
  draft     - a 2-layer model trained for --draft-steps steps on --corpus (default: the shipped sample of the
              bundled model's corpus), with its tokenizer, drafting for the bundled model (k = 4).
Every speculative output is checked equal to the plain one before it is timed.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

import gpt_jax
from gpt_jax.bench.models import read_bandwidth_gbs, weight_bytes
from gpt_jax.decoding.batching import bucket
from gpt_jax.bench.reference import Reference
from gpt_jax.model.presets import PRESETS
from gpt_jax.training.config import DEFAULT_WARMUP_STEPS, TrainConfig
from gpt_jax.training.trainer import train
from gpt_jax.bench.corpus import add_corpus_flag, corpus_file
from gpt_jax.util.argparsing import OneLineParser, positive_int
from gpt_jax.util.output_files import check_output_file, write_text_atomically

QUOTE = (
    "HAMLET:\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
    "And by opposing end them.\n\nHORATIO:\nSay it again, my lord.\n\nHAMLET:\nTo be, or not to be,"
)


def timed(gen, prompts, settings, repeats: int) -> tuple[float, gpt_jax.GenerationResult]:
    """Seconds of the fastest of `repeats` runs (after one that compiles), and the result."""
    out = gen.generate_ids(prompts, **settings)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = gen.generate_ids(prompts, **settings)
        best = min(best, time.perf_counter() - start)
    return best, out


def compare(gen, prompts, settings, speculative, plain, repeats: int) -> dict:
    """One speculative configuration against the plain run `plain` (seconds, result)."""
    seconds, out = timed(gen, prompts, {**settings, "speculative": speculative}, repeats)
    if out.token_ids != plain[1].token_ids:
        raise AssertionError("speculative decoding changed the output")
    tokens = sum(len(t) for t in out.token_ids)
    passes = sum(out.speculation["passes"])
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "ratio": round(plain[0] / seconds, 2),
        "tokens_per_pass": round(tokens / passes, 2),
        "acceptance": round(sum(out.speculation["accepted"]) / max(1, sum(out.speculation["proposed"])), 3),
    }


def ceiling(args, bandwidth: float) -> list[dict]:
    rows = []
    for shape in args.shapes:
        gen = gpt_jax.Generator.from_config(PRESETS[shape], key=0)
        roofline_per_row = bandwidth * 1e9 / weight_bytes(gen.params, gen.config.tie_embeddings)
        rng = np.random.default_rng(0)
        for batch in args.batches:
            prompts = [rng.integers(3, min(1000, gen.config.vocab_size), 32).tolist() for _ in range(batch)]
            settings = dict(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
            plain = timed(gen, prompts, settings, args.repeats)
            plain_tps = batch * args.new_tokens / plain[0]
            reference = np.zeros((bucket(batch), args.new_tokens), np.int32)  # the call's rows
            reference[:batch] = plain[1].token_ids
            row = {"shape": shape, "batch": batch, "plain_tokens_per_s": round(plain_tps, 1)}
            row["plain_roofline"] = round(plain_tps / (batch * roofline_per_row), 3)
            for a in (1.0, 0.8, 0.5, 0.0):
                for k in (2, 4, 8):
                    r = compare(gen, prompts, settings, Reference(reference, k, a, seed=1), plain, args.repeats)
                    r["roofline"] = round(r["tokens_per_s"] / (batch * roofline_per_row), 3)
                    row[f"a={a},k={k}"] = r
                    print(f"{shape} batch {batch} a={a} k={k}: {r} (plain {plain_tps:.1f} tok/s)", file=sys.stderr)
            rows.append(row)
    return rows


def lookup(args) -> list[dict]:
    rows = []
    bundled = gpt_jax.load()
    lookup_k4 = gpt_jax.PromptLookup(num_tokens=4, max_ngram=3)
    for task, text in (("bundled, free generation", "KING HENRY:\n"), ("bundled, quoting its prompt", QUOTE)):
        prompts = [bundled.tokenizer.encode(text)]
        settings = dict(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
        plain = timed(bundled, prompts, settings, args.repeats)
        rows.append({"task": task, **compare(bundled, prompts, settings, lookup_k4, plain, args.repeats)})
        print(rows[-1], file=sys.stderr)
    gen = gpt_jax.Generator.from_config(PRESETS["gpt2-small"], key=0)
    prompts = [np.random.default_rng(1).integers(3, 1000, 32).tolist()]
    settings = dict(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    plain = timed(gen, prompts, settings, args.repeats)
    rows.append(
        {"task": "random gpt2-small, greedy", **compare(gen, prompts, settings, lookup_k4, plain, args.repeats)}
    )
    print(rows[-1], file=sys.stderr)
    return rows


def draft(args) -> dict:
    bundled = gpt_jax.load()
    with tempfile.TemporaryDirectory() as tmp:
        config = bundled.config.replace(n_layers=2)
        warmup = min(DEFAULT_WARMUP_STEPS, args.draft_steps - 1)  # as the published runs had it
        tc = TrainConfig(
            steps=args.draft_steps, batch_size=16, seq_len=256, warmup_steps=warmup, eval_every=10**6,
            checkpoint_every=10**6,
        )
        start = time.perf_counter()
        trainer = train([str(corpus_file(args.corpus))], tmp, config, tc, tokenizer=bundled.tokenizer, progress=False)
        trained_s = time.perf_counter() - start
        small = trainer.generator()
    speculative = gpt_jax.DraftModel(small, num_tokens=4)
    out = {"draft_layers": 2, "draft_steps": args.draft_steps, "draft_train_s": round(trained_s), "tasks": []}
    for task, text in (("free generation", "KING HENRY:\n"), ("quoting its prompt", QUOTE)):
        prompts = [bundled.tokenizer.encode(text)]
        for mode, settings in (("greedy", dict(temperature=0.0)), ("sampled", dict(temperature=0.8, seed=1))):
            settings = dict(max_new_tokens=args.new_tokens, ignore_eos=True, **settings)
            plain = timed(bundled, prompts, settings, args.repeats)
            row = {"task": task, "mode": mode, **compare(bundled, prompts, settings, speculative, plain, args.repeats)}
            out["tasks"].append(row)
            print(row, file=sys.stderr)
    return out


def parser() -> OneLineParser:
    ap = OneLineParser(prog="gpt-jax bench --speculative", description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["gpt2-small", "llama-small"], choices=sorted(PRESETS))
    ap.add_argument("--batches", nargs="+", type=positive_int, default=[1, 8])
    ap.add_argument("--new-tokens", type=positive_int, default=128)
    ap.add_argument("--repeats", type=positive_int, default=2)
    ap.add_argument(
        "--parts", nargs="+", default=["ceiling", "lookup", "draft"], choices=["ceiling", "lookup", "draft"]
    )
    ap.add_argument("--draft-steps", type=positive_int, default=300)
    add_corpus_flag(ap)
    ap.add_argument("--out", default="benchmarks/results/speculative.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_output_file(args.out, "--out")
    corpus_file(args.corpus)  # a missing corpus is reported now, not after the first parts ran
    bandwidth, by_method = read_bandwidth_gbs()
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "read_bandwidth_gbs": round(bandwidth, 1),
            "python": platform.python_version(),
            "device": jax.devices()[0].device_kind,
        },
        "new_tokens": args.new_tokens,
    }
    if "ceiling" in args.parts:
        result["ceiling"] = ceiling(args, bandwidth)
    if "lookup" in args.parts:
        result["lookup"] = lookup(args)
    if "draft" in args.parts:
        result["draft"] = draft(args)
    write_text_atomically(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
