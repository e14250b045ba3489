"""Batch generation on the bundled model, each batch size in a fresh process: the first call (trace, compile, run),
the second call's tokens/s, and peak resident memory. Prompts of 4-10 tokens, 32 sampled tokens, ignore_eos.

    python benchmarks/batch_first_call.py [--batches 16 64 256] [--out benchmarks/results/batch_first_call.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
import gpt_jax
batch = int(sys.argv[1])
gen = gpt_jax.load()
rng = np.random.default_rng(0)
prompts = [rng.integers(4, 4000, rng.integers(4, 11)).tolist() for _ in range(batch)]
s = dict(max_new_tokens=32, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)
t = time.perf_counter(); first = gen.generate_ids(prompts, **s); first_s = time.perf_counter() - t
t = time.perf_counter(); second = gen.generate_ids(prompts, **s); run_s = time.perf_counter() - t
assert first.token_ids == second.token_ids
print(json.dumps({"batch": batch, "first_call_s": round(first_s, 2), "tokens_per_s": round(batch * 32 / run_s),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--out", default="benchmarks/results/batch_first_call.json")
    args = ap.parse_args()
    rows = []
    for batch in args.batches:
        done = subprocess.run([sys.executable, "-c", CHILD, str(batch)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
