"""First-call time of the GPT-2-small shape (random weights, prompt 32, 128 greedy tokens), in fresh processes:
without the persistent compile cache, while filling it, and from it.

    python benchmarks/first_call.py [--repeats 2] [--out benchmarks/results/first_call.json]

Each process times its first `generate_ids` (trace + compile + run) and a second identical call (run only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import jax
import gpt_jax
from gpt_jax.model.presets import GPT2_SMALL
if sys.argv[1] != "-":
    gpt_jax.enable_compile_cache(sys.argv[1])
gen = gpt_jax.Generator.from_config(GPT2_SMALL, key=0)
jax.block_until_ready(gen.params)
times = []
for _ in range(2):
    t = time.perf_counter()
    gen.generate_ids([[5] * 32], max_new_tokens=128, temperature=0.0, ignore_eos=True)
    times.append(time.perf_counter() - t)
print(json.dumps({"first_call_s": times[0], "second_call_s": times[1]}))
"""


def run(cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, cache], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/first_call.json")
    args = ap.parse_args(argv)
    results = {"no_cache": [], "filling_cache": [], "from_cache": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            results["no_cache"].append(run("-"))
            results["filling_cache"].append(run(cache))
            results["from_cache"].append(run(cache))
    summary = {
        name: {key: round(statistics.median(r[key] for r in rs), 2) for key in ("first_call_s", "second_call_s")}
        for name, rs in results.items()
    }
    for name, s in summary.items():
        print(f"{name:14s} first call {s['first_call_s']:5.2f} s   second call {s['second_call_s']:5.2f} s")
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version()}, **summary}
    report["runs"] = results
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
