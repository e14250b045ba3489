"""The decode of the bundled model (or a random preset shape) from two checkouts, each configuration in a fresh
process, alternating: first call, tokens/s of the best of the further calls (--calls, default 2), peak memory. The
checkout given by --before runs its own default arithmetic; this one runs exact and fast.

    python benchmarks/arithmetic_before_after.py --before /path/to/old/checkout [--shape bundled]
        [--batches 1 16 64 256] [--new-tokens 32] [--wide-batch 2048] [--wide-without-before] [--calls 2]
        [--out benchmarks/results/arithmetic.json]

--wide-batch: one more batch size decoded for 1 token (the first call of a very wide batch).
--previous CHECKOUT: a third checkout's default arithmetic beside them (e.g. the commit before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
import gpt_jax
try:
    from gpt_jax.model.presets import PRESETS
except ImportError:  # a checkout from before the package's layout change
    from gpt_jax.config import PRESETS
shape, arithmetic = sys.argv[1], sys.argv[2]
batch, new_tokens, calls = (int(a) for a in sys.argv[3:6])
gen = gpt_jax.load() if shape == "bundled" else gpt_jax.Generator.from_config(PRESETS[shape], key=0)
if hasattr(gen, "with_arithmetic"):
    gen = gen.with_arithmetic(arithmetic)
rng = np.random.default_rng(0)
prompts = [rng.integers(4, 4000, rng.integers(4, 11)).tolist() for _ in range(batch)]
s = dict(max_new_tokens=new_tokens, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)
t = time.perf_counter(); first = gen.generate_ids(prompts, **s); first_s = time.perf_counter() - t
runs = []
for _ in range(calls):
    t = time.perf_counter(); gen.generate_ids(prompts, **s); runs.append(time.perf_counter() - t)
print(json.dumps({"first_call_s": round(first_s, 2), "tokens_per_s": round(batch * new_tokens / min(runs), 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def run(checkout: Path, shape: str, arithmetic: str, batch: int, new_tokens: int, calls: int = 2) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    argv = [sys.executable, "-c", CHILD, shape, arithmetic, str(batch), str(new_tokens), str(calls)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=checkout)
    if done.returncode:
        return {"error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--shape", default="bundled")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 16, 64, 256])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--wide-batch", type=int, default=2048)
    ap.add_argument("--wide-without-before", action="store_true", help="the wide batch from this checkout only")
    ap.add_argument("--calls", type=int, default=2, help="calls after the first; tokens/s is the best of them")
    ap.add_argument("--previous", type=Path, help="a third checkout, run with its default arithmetic")
    ap.add_argument("--out", default="benchmarks/results/arithmetic.json")
    args = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    plan = [(b, args.new_tokens) for b in args.batches] + ([(args.wide_batch, 1)] if args.wide_batch else [])
    rows = []
    for batch, tokens in plan:
        row = {"shape": args.shape, "batch": batch, "new_tokens": tokens}
        runs = [("before", args.before, "exact")] + ([("previous", args.previous, "exact")] if args.previous else [])
        for name, checkout, arithmetic in runs + [("exact", here, "exact"), ("fast", here, "fast")]:
            if name in ("before", "previous") and tokens == 1 and args.wide_without_before:
                continue
            row[name] = run(checkout, args.shape, arithmetic, batch, tokens, args.calls)
        rows.append(row)
        print(json.dumps(row), flush=True)
        out = {"machine": platform.processor() or platform.machine(), "before": str(args.before),
               "previous": str(args.previous) if args.previous else None, "rows": rows}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")  # after each row: a stopped run keeps its rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
