"""Would prefilling short prompts together keep each one's bits? The engine's prefill program on R prompts of one
bucket T (left-padded, lengths T/2+1 .. T) at once against each alone: are each row's first-token logits and
last-layer keys the same bits, and what does each way take (mean of 20 runs after one warm-up).

    python benchmarks/prefill_batching.py [llama]   # the bundled model, or a random 4-layer Llama of width 256

Prints a line per (T, R) and writes benchmarks/results/prefill_batching[_llama].json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import gpt_jax  # noqa: E402
from gpt_jax.bench.serving import long_context_llama, machine  # noqa: E402
from gpt_jax.serving.engine import slot_programs  # noqa: E402

PROMPTS = 8


def mean_seconds(fn, runs: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def measure_bucket(gen, programs, t: int, rng) -> list[dict]:
    lengths = rng.integers(t // 2 + 1, t + 1, PROMPTS)
    tokens, pads = np.full((PROMPTS, t), 3, np.int32), (t - lengths).astype(np.int32)
    for r, length in enumerate(lengths):
        tokens[r, t - length :] = rng.integers(4, 3000, length)

    def prefill(rows):
        cache = programs.new_cache(len(rows), t).replace(index=np.int32(0))
        logits, cache, _ = programs.prefill(gen.params, tokens[rows], pads[rows], cache, tokens[rows], np.int32(t - 1))
        return np.asarray(logits), np.asarray(cache.k[-1])

    alone, kv, out = [prefill([r]) for r in range(PROMPTS)], gen.config.n_kv_heads, []
    for count in (2, 4, 8):
        rows = list(range(count))
        logits, keys = prefill(rows)
        same = all(np.array_equal(logits[r], alone[r][0][0]) for r in rows)
        same_keys = all(np.array_equal(keys[r * kv : (r + 1) * kv], alone[r][1]) for r in rows)
        diff = max(float(np.abs(logits[r] - alone[r][0][0]).max()) for r in rows)
        one_by_one = mean_seconds(lambda: [jax.block_until_ready(prefill([r])[0]) for r in rows])
        together = mean_seconds(lambda: jax.block_until_ready(prefill(rows)[0]))
        print(
            f"T={t} R={count}: logits same bits {same}, last-layer keys same {same_keys}, max |diff| {diff:.2e}; "
            f"one by one {one_by_one * 1e3:.1f} ms, together {together * 1e3:.1f} ms ({one_by_one / together:.2f}x)",
            flush=True,
        )
        out.append(
            {"bucket": t, "prompts": count, "same_logits": bool(same), "same_keys": bool(same_keys),
             "max_abs_diff": diff, "one_by_one_ms": one_by_one * 1e3, "together_ms": together * 1e3}
        )  # fmt: skip
    return out


def main() -> int:
    llama = sys.argv[1:] == ["llama"]
    gen = gpt_jax.Generator.from_config(long_context_llama(8192), key=0) if llama else gpt_jax.load()
    programs, rng = slot_programs(gen, PROMPTS, 256), np.random.default_rng(0)
    rows = [row for t in (16, 32, 64) for row in measure_bucket(gen, programs, t, rng)]
    name = "prefill_batching" + ("_llama" if llama else "") + ".json"
    Path("benchmarks/results", name).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
