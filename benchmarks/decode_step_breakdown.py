"""Where a batch-1 decode step's time goes on this CPU: the whole step against its weight products alone and
against reading the weights once.

    python benchmarks/decode_step_breakdown.py [--shapes llama-small gpt2-small] [--out FILE]

For each shape (random weights, fp32) and arithmetic (exact: the CPU product kernel where it is enabled, else a lone
row paired with a zero row through XLA; fast: XLA's matrix-vector kernel):
  step_ms      a decode step of `generate_ids` (65 new tokens minus 1, per step, median of 3)
  products_ms  the step's weight products alone, one after another (each input made from the last output, so XLA
               runs them in order), the same row counts: what XLA:CPU's product kernels cost
  read_ms      the weight bytes a step reads / the best measured read bandwidth: the roofline
The gap products_ms - read_ms is the kernels' own; step_ms - products_ms is everything else in the step
(attention, norms, sampling, the loop).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gpt_jax  # noqa: E402
from gpt_jax.bench.models import read_bandwidth_gbs, weight_bytes  # noqa: E402
from gpt_jax.model.kernels import cpu_products  # noqa: E402
from gpt_jax.model.params import flatten  # noqa: E402
from gpt_jax.model.transformer import weight_infos  # noqa: E402
from gpt_jax.model.presets import PRESETS  # noqa: E402


def median_time(fn, repeats=5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def kernels(gen) -> list[tuple[jax.Array, bool]]:
    """Every projection kernel as an [in, out] matrix, in the model's order (the head among them where it is a
    weight of its own), then a tied head as the [out, in] embedding; each with whether it is stored [out, in]."""
    infos, out = weight_infos(gen.config), []
    for name, leaf in flatten(gen.params).items():
        inputs = infos[name].inputs
        if inputs:
            out.append((leaf.reshape(math.prod(leaf.shape[:inputs]), -1), False))
    return out + ([(gen.params["embed"], True)] if gen.config.tie_embeddings else [])


def products_seconds(mats, rows: int, kernel: bool = False) -> float:
    def product(x, w, weight_rows):
        if kernel:
            return cpu_products.row_product(x, w, weight_rows)
        return x @ w.T if weight_rows else x @ w

    weights = [w for w, _ in mats]
    layouts = [weight_rows for _, weight_rows in mats]

    @jax.jit
    def chain(x, weights):
        for w, weight_rows in zip(weights, layouts):
            x = jnp.resize(x, (rows, w.shape[1] if weight_rows else w.shape[0])) * 0.5
            x = product(x, w, weight_rows)
        return x

    x = jnp.ones((rows, weights[0].shape[0]), jnp.float32)
    return median_time(lambda: jax.block_until_ready(chain(x, weights)))


def step_seconds(gen, prompt) -> float:
    def run(n):
        return lambda: gen.generate_ids([prompt], max_new_tokens=n, temperature=0.0, ignore_eos=True, seed=0)

    return (median_time(run(65), 3) - median_time(run(1), 3)) / 64


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["llama-small", "gpt2-small"])
    ap.add_argument("--out", default="benchmarks/results/decode_step_breakdown.json")
    args = ap.parse_args()
    bandwidth, _ = read_bandwidth_gbs()
    rows = []
    for shape in args.shapes:
        exact = gpt_jax.Generator.from_config(PRESETS[shape], key=0)
        read_s = weight_bytes(exact.params, exact.config.tie_embeddings) / (bandwidth * 1e9)
        mats = kernels(exact)
        prompt = np.random.default_rng(0).integers(3, 1000, 32).tolist()
        kernel = cpu_products.enabled()
        for arithmetic, product_rows in (("exact", 1 if kernel else 2), ("fast", 1)):
            gen = exact.with_arithmetic(arithmetic)
            row = {
                "shape": shape,
                "arithmetic": arithmetic,
                "step_ms": round(1000 * step_seconds(gen, prompt), 2),
                "products_ms": round(1000 * products_seconds(mats, product_rows, kernel and arithmetic == "exact"), 2),
                "read_ms": round(1000 * read_s, 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"read_bandwidth_gbs": bandwidth, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
