"""Batch jobs on the bundled model: `gpt-jax batch` (continuous batching) against `generate_ids` in static batches
of the same size, and Ray Data with 1 and 2 actors, on the same requests in one run.

    python benchmarks/batch_jobs.py [--requests 1000] [--slots 16] [--ray] [--out benchmarks/results/batch_jobs.json]

Requests: corpus slices of 8-64 tokens, outputs of geometric length (mean 32), each generating exactly that many
tokens (min_tokens = max_tokens), so every side does the same work. Reported: wall time (model loaded, compile
included on every side) and output tokens/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpt_jax  # noqa: E402
from gpt_jax.bench.corpus import corpus_file  # noqa: E402
from gpt_jax.bench.serving import machine, make_requests  # noqa: E402
from gpt_jax.jobs.batch_file import run_batch  # noqa: E402


def body(r: dict) -> dict:
    out = r["output"]
    return {"model": "shakespeare", "prompt": r["prompt"], "max_tokens": out, "min_tokens": out, "seed": r["seed"]}


def static_side(gen, requests, slots: int) -> dict:
    start, tokens = time.perf_counter(), 0
    for b in range(0, len(requests), slots):
        group = requests[b : b + slots]
        outputs = [r["output"] for r in group]
        result = gen.generate_ids(
            [r["prompt"] for r in group], max_new_tokens=outputs, min_new_tokens=outputs, temperature=1.0, seed=0
        )
        tokens += sum(map(len, result.token_ids))
    wall = time.perf_counter() - start
    return {"side": f"generate_ids, static batches of {slots}", "wall_s": round(wall, 1), "tokens": tokens}


def batch_side(gen, requests, slots: int, workdir: Path) -> dict:
    source, output = workdir / "in.jsonl", workdir / "out.jsonl"
    lines = (
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body(r)})
        for i, r in enumerate(requests)
    )
    source.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    progress = run_batch(gen, source, output, "shakespeare", slots=slots)
    wall = time.perf_counter() - start
    assert progress.errors == 0, progress.summary()
    return {"side": f"gpt-jax batch, {slots} slots", "wall_s": round(wall, 1), "tokens": progress.tokens}


def ray_side(requests, slots: int, actors: int) -> dict:
    import ray

    from gpt_jax.jobs.ray_data import Generate

    rows = [{**body(r), "id": i} for i, r in enumerate(requests)]
    for row in rows:
        row.pop("model")
    start = time.perf_counter()
    out = ray.data.from_items(rows).map_batches(
        Generate, fn_constructor_kwargs={"slots": slots}, batch_size=64, concurrency=actors, num_cpus=0.5
    )
    results = out.take_all()
    wall = time.perf_counter() - start
    assert all(r["error"] is None for r in results)
    tokens = sum(r["completion_tokens"] for r in results)
    return {"side": f"Ray Data, {actors} actor(s) of {slots} slots", "wall_s": round(wall, 1), "tokens": tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--ray", action="store_true", help="also Ray Data with 1 and 2 actors")
    ap.add_argument("--out", default="benchmarks/results/batch_jobs.json")
    args = ap.parse_args()
    gen = gpt_jax.load()
    requests = make_requests(gen.tokenizer, args.requests, 0, (8, 64), 32.0, gen.config.max_seq_len, corpus_file(None))
    with tempfile.TemporaryDirectory() as tmp:
        sides = [static_side(gen, requests, args.slots), batch_side(gen, requests, args.slots, Path(tmp))]
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        sides += [ray_side(requests, args.slots, 1), ray_side(requests, args.slots, 2)]
        ray.shutdown()
    for side in sides:
        side["tokens_per_s"] = round(side["tokens"] / side["wall_s"], 1)
        print(f"| {side['side']} | {side['wall_s']} | {side['tokens']} | {side['tokens_per_s']} |", flush=True)
    report = {"machine": machine(), "requests": args.requests, "slots": args.slots, "sides": sides}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
