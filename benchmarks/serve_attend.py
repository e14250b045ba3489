"""Serving decode over what the slots hold: the engine with a long `max_len` against a short one, with and without
attending to a bucket of the filled length, in one run.

    python benchmarks/serve_attend.py [--context 8192] [--out benchmarks/results/serve_attend.json]

A random Llama-shaped model (4 layers, width 256, 4 heads, 2 kv heads, vocabulary 4000, `--context` positions),
8 slots, 8 concurrent requests of 32-token prompts and 128 new tokens each (min_tokens = max_tokens), sampled.
"buckets off" is the engine made to attend to every slot's whole length (`attend_bucket` returning it), as it did
before buckets. Reported: output tokens/s of the 8 requests after a warm-up round (compiling excluded), and the
slot decode program alone (every slot live, attending to 256 positions, 4 steps per dispatch) in ms per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import gpt_jax  # noqa: E402
from benchmarks.serve_dispatch import device_only  # noqa: E402
from gpt_jax.bench.serving import long_context_llama, machine  # noqa: E402
from gpt_jax.decoding.settings import GenerationSettings  # noqa: E402
from gpt_jax.serving import slots  # noqa: E402
from gpt_jax.serving.engine import Engine  # noqa: E402
from tests.serving import run_requests  # noqa: E402


def measure(gen, max_len: int, items) -> float:
    engine = Engine(gen, slots_count=8, max_len=max_len, steps_per_dispatch=4)
    try:
        run_requests(engine, items)  # warm-up: compiles
        start = time.perf_counter()
        results = run_requests(engine, items)
        wall = time.perf_counter() - start
    finally:
        engine.close()
    return sum(len(r["tokens"][0]) for r in results) / wall


def program_ms_per_step(gen, max_len: int, items) -> float:
    """The slot decode program alone, 8 live slots over their first 256 positions (best of three repeats)."""
    engine = Engine(gen, slots_count=8, max_len=max_len, steps_per_dispatch=4)
    try:
        prep = engine.prepare(items[0][0], GenerationSettings.of(items[0][1]))
        return 1e3 * device_only(engine, prep, gen.params, steps=4, rounds=50, attend=256)
    finally:
        engine.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--out", default="benchmarks/results/serve_attend.json")
    args = ap.parse_args()
    gen = gpt_jax.Generator.from_config(long_context_llama(args.context), key=0)
    rng = np.random.default_rng(0)
    settings = {"max_new_tokens": 128, "min_new_tokens": 128, "temperature": 1.0}
    items = [(rng.integers(3, 4000, 32).tolist(), {**settings, "seed": i}) for i in range(8)]
    rows = []
    original = slots.attend_bucket
    for buckets in (True, False):
        if not buckets:
            slots.attend_bucket = lambda reach, length: length
        for max_len in (args.context, 512):
            tps = measure(gen, max_len, items)
            rows.append({"buckets": buckets, "max_len": max_len, "tokens_per_s": round(tps, 1)})
            print(json.dumps(rows[-1]), flush=True)
    slots.attend_bucket = original
    program = {str(n): round(program_ms_per_step(gen, n, items), 3) for n in (args.context, 512)}
    print(json.dumps({"program_ms_per_step_attending_256": program}), flush=True)
    config = {"context": args.context, "slots": 8, "requests": 8}
    report = {"machine": machine(), "config": config, "rows": rows, "program_ms_per_step_attending_256": program}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
