"""How much the serving engine's host loop costs: decode steps per dispatch against the device program alone.

All slots busy with equal-length requests (the case where static batching wastes nothing):
  device      - the compiled slot decode program called back to back (no scheduling, no token hand-off)
  engine, k   - the engine serving the requests with k decode steps per dispatch (prefill, insertion, delivery)
  generate    - `generate_ids` on the same prompts as one static batch
Prints a table and writes benchmarks/results/serve_dispatch.json.

    python benchmarks/serve_dispatch.py [--slots 8] [--tokens 200]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import jax
import numpy as np

import gpt_jax
from gpt_jax.bench.serving import machine
from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.serving.engine import Engine, Request
from gpt_jax.serving.slots import RowSettings


def serve_all(engine: Engine, preps) -> float:
    """Seconds until every request has finished."""
    left, done, lock = [len(preps)], threading.Event(), threading.Lock()

    def on_event(event):
        if event.kind in ("finish", "error"):
            with lock:
                left[0] -= 1
                if not left[0]:
                    done.set()

    start = time.perf_counter()
    for prep in preps:
        engine.submit(Request(prep, on_event))
    done.wait()
    return time.perf_counter() - start


def device_only(engine: Engine, prep, params, steps: int, rounds: int, attend: int | None = None) -> float:
    """Seconds per decode step of the slot program with every slot running one sequence (built by hand), attending
    to the first `attend` positions of each slot (default: all)."""
    programs, inputs = engine.programs, prep.inputs
    t = inputs.tokens.shape[1]
    cache = programs.new_cache(1, t).replace(index=np.int32(0))
    last = np.int32(inputs.tokens.shape[1] - 1)
    logits, cache, _ = programs.prefill(params, inputs.tokens[:1], inputs.pad_len[:1], cache, inputs.tokens[:1], last)
    row = RowSettings.of(inputs, 0).replace(max_new_tokens=np.int32(10**6))
    release = np.zeros(engine.slots, bool)
    best = float("inf")
    for repeat in range(4):  # the first compiles; each starts afresh (a slot ends when its cache is full)
        state = programs.empty()
        for b in range(engine.slots):
            pad = inputs.pad_len[0]
            state = programs.insert(
                state, np.int32(b), inputs.tokens[0], pad, np.int32(pad), cache, logits[0], row
            )
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(rounds):
            state, out = programs.decode(params, state, release, steps=steps, top_logprobs=0, attend=attend)
        jax.block_until_ready(out)
        assert not np.asarray(state.rows.done).any()  # every slot decoded every step
        best = min(best, (time.perf_counter() - start) / (rounds * steps)) if repeat else best
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--tokens", type=int, default=200, help="tokens per request")
    p.add_argument("--json", default="benchmarks/results/serve_dispatch.json")
    args = p.parse_args()
    gen = gpt_jax.load()
    prompts = [gen.tokenizer.encode(f"ROMEO: the king {'doth ' * i}wake") for i in range(args.slots)]
    settings = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "temperature": 1.0, "seed": 0}
    rows = []
    for steps in (1, 2, 4, 8):
        engine = Engine(gen, slots_count=args.slots, steps_per_dispatch=steps)
        preps = [engine.prepare(ids, GenerationSettings.of(settings)) for ids in prompts]
        serve_all(engine, preps)  # compiles
        seconds = min(serve_all(engine, preps) for _ in range(5))
        engine.close()
        device = device_only(engine, preps[0], gen.params, steps, args.tokens // steps)
        rows.append(
            {
                "steps_per_dispatch": steps,
                "engine_tok_s": args.slots * args.tokens / seconds,
                "device_ms_per_step": device * 1e3,
                "engine_ms_per_step": seconds / args.tokens * 1e3,
            }
        )
    gen.generate_ids(prompts, **settings)
    seconds = min(_timed(lambda: gen.generate_ids(prompts, **settings)) for _ in range(5))
    static = {"generate_tok_s": args.slots * args.tokens / seconds, "generate_ms_per_step": seconds / args.tokens * 1e3}
    print(
        f"slots {args.slots}, {args.tokens} tokens each, bundled model; generate: {static['generate_tok_s']:.0f} "
        f"tok/s ({static['generate_ms_per_step']:.2f} ms/step)"
    )
    print("| steps per dispatch | engine tok/s | engine ms/step | device program ms/step | host share |")
    print("|---|---|---|---|---|")
    for r in rows:
        share = 1 - r["device_ms_per_step"] / r["engine_ms_per_step"]
        print(
            f"| {r['steps_per_dispatch']} | {r['engine_tok_s']:.0f} | {r['engine_ms_per_step']:.2f} | "
            f"{r['device_ms_per_step']:.2f} | {share:.0%} |"
        )
    report = {"machine": machine(), "slots": args.slots, "tokens": args.tokens}
    Path(args.json).write_text(json.dumps({**report, **static, "rows": rows}, indent=1) + "\n")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
