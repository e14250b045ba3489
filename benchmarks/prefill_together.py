"""Short prompts that arrive together, prefilled in one pass (`Engine(prefill_together=16)`, the default) or one by
one (`prefill_together=1`): a burst of G requests (prompts of 16-64 tokens, 32 new tokens, sampled, seeded) reaches
an idle engine of G slots. Both engines live in one process and take turns, a warm-up burst each (the grouped
passes' programs compiled before it, as on a server that has run a while), then --rounds bursts each; reported:
time to first token (p50 and the burst's last), the burst's wall time, and whether every request got the same
tokens and log-probabilities both ways (bit for bit).

    python benchmarks/prefill_together.py [--model bundled|llama] [--bursts 8 16] [--rounds 4]

Writes benchmarks/results/prefill_together[_llama].json.
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
from gpt_jax.bench.serving import long_context_llama, machine  # noqa: E402
from gpt_jax.decoding.settings import GenerationSettings  # noqa: E402
from gpt_jax.serving.engine import Engine  # noqa: E402
from gpt_jax.serving.requests import Outcome, Request  # noqa: E402

NEW_TOKENS = 32


def burst(engine, items) -> dict:
    """Submit every (prompt, settings) at once; wait; times from the submission and each request's output."""
    requests, outcomes = [], []
    for ids, settings in items:
        prep = engine.prepare(ids, GenerationSettings.of(settings))
        outcomes.append(Outcome(prep.rows))
        requests.append(Request(prep, outcomes[-1].on_event))
    start = time.perf_counter()
    for request in requests:
        engine.submit(request)
    assert all(o.wait(600) for o in outcomes), "a request did not finish"
    end = time.perf_counter()
    ttft = sorted(r.first_token - start for r in requests)
    return {"ttft": ttft, "wall": end - start, "out": [(o.tokens, o.logprobs) for o in outcomes]}


def measure(gen, size: int, rounds: int, max_len: int) -> dict:
    rng = np.random.default_rng(size)
    items = [
        (rng.integers(4, gen.config.vocab_size, int(rng.integers(16, 65))).tolist(),
         {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "temperature": 0.8, "seed": i})
        for i in range(size)
    ]  # fmt: skip
    engines = {
        name: Engine(gen, slots_count=size, max_len=max_len, max_queue=size, prefill_together=together)
        for name, together in (("together", 16), ("one by one", 1))
    }
    runs = {name: [] for name in engines}
    engines["together"].admission.warm((16, 32, 64))  # the passes' programs, as a server that has run a while
    try:
        for r in range(rounds + 1):  # round 0 compiles
            for name, engine in engines.items():
                result = burst(engine, items)
                if r:
                    runs[name].append(result)
    finally:
        for engine in engines.values():
            engine.close()
    same = all(a["out"] == b["out"] for a, b in zip(runs["together"], runs["one by one"]))
    row = {"burst": size, "same_bits": same}
    for name, results in runs.items():
        row[name] = {
            "ttft_p50_ms": round(1e3 * float(np.median([np.median(x["ttft"]) for x in results])), 1),
            "ttft_last_ms": round(1e3 * float(np.median([x["ttft"][-1] for x in results])), 1),
            "wall_ms": round(1e3 * float(np.median([x["wall"] for x in results])), 1),
        }
    row["ttft_p50_ratio"] = round(row["one by one"]["ttft_p50_ms"] / row["together"]["ttft_p50_ms"], 2)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("bundled", "llama"), default="bundled")
    ap.add_argument("--bursts", nargs="*", type=int, default=[8, 16])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if args.model == "llama":
        gen, max_len = gpt_jax.Generator.from_config(long_context_llama(8192), key=0), 8192
    else:
        gen, max_len = gpt_jax.load(), 256
    rows = []
    for size in args.bursts:
        rows.append(measure(gen, size, args.rounds, max_len))
        print(json.dumps(rows[-1]), flush=True)
    name = "prefill_together" + ("_llama" if args.model == "llama" else "") + ".json"
    out = {"machine": machine(), "model": args.model, "max_len": max_len, "new_tokens": NEW_TOKENS, "rows": rows}
    Path("benchmarks/results", name).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
