"""The CPU product kernel (gpt_jax/model/kernels) against XLA:CPU's own products, one product shape at a time.

    python benchmarks/cpu_products.py [--rows 1 2 8 64 256] [--out benchmarks/results/cpu_products.json]

For each row count M and each product shape of the bundled model and of GPT-2 small (x [M, K] times a weight
[K, N], or [N, K] for a tied embedding head): the time of one product, as the mean over a `fori_loop` of 20
dependent products (each input made from the last output, so nothing is hoisted), best of 5; and the weight read
rate it reaches (weight bytes / time), which is what bounds a decode step with few rows. Also, in one program, a
chain of 24 products over distinct GPT-2-small MLP weights (226 MB, beyond the caches): the rate at which a
decode step's products can stream their weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gpt_jax.model.kernels import cpu_products  # noqa: E402
from gpt_jax.util.output_files import check_output_file, write_text_atomically  # noqa: E402

# (name, K, N, weight stored [N, K])
SHAPES = [
    ("bundled q/k/v/o", 256, 256, False),
    ("bundled gate/up", 256, 704, False),
    ("bundled down", 704, 256, False),
    ("bundled head (tied)", 256, 4000, True),
    ("gpt2 qkv", 768, 2304, False),
    ("gpt2 down", 3072, 768, False),
    ("gpt2 head (tied)", 768, 50257, True),
]
REPS = 20


def best(fn, *args, repeats=5) -> float:
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return min(times)


def products(weight_rows: bool):
    xla = (lambda x, w: x @ w.T) if weight_rows else (lambda x, w: x @ w)
    return {"xla": xla, "kernel": lambda x, w: cpu_products.row_product(x, w, weight_rows)}


def one_shape(rng, m: int, k: int, n: int, weight_rows: bool) -> dict:
    w = jnp.asarray(rng.standard_normal((n, k) if weight_rows else (k, n), dtype=np.float32) * 0.02)
    x = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
    out = {}
    for name, product in products(weight_rows).items():

        def body(_, x, product=product):
            y = product(x, w)
            return x + 1e-3 * jnp.tile(y, (1, -(-k // n)))[:, :k]

        seconds = best(jax.jit(lambda x: jax.lax.fori_loop(0, REPS, body, x)), x) / REPS
        out[name] = {"us": round(seconds * 1e6, 1), "weight_gbs": round(w.size * 4 / seconds / 1e9, 1)}
    out["kernel_over_xla"] = round(out["kernel"]["us"] / out["xla"]["us"], 2)
    return out


def chain(rng, m: int) -> dict:
    ups = [jnp.asarray(rng.standard_normal((768, 3072), dtype=np.float32) * 0.02) for _ in range(12)]
    downs = [jnp.asarray(rng.standard_normal((3072, 768), dtype=np.float32) * 0.02) for _ in range(12)]
    nbytes = sum(a.size * 4 for a in ups + downs)
    x = jnp.asarray(rng.standard_normal((m, 768), dtype=np.float32))
    out = {}
    for name, product in products(False).items():

        def run(x, ups, downs, product=product):
            for up, down in zip(ups, downs):
                x = x + product(product(x, up), down)
            return x

        seconds = best(jax.jit(run), x, ups, downs, repeats=10)
        out[name] = {"ms": round(seconds * 1e3, 2), "weight_gbs": round(nbytes / seconds / 1e9, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="*", type=int, default=[1, 2, 8, 64, 256])
    ap.add_argument("--out", default="benchmarks/results/cpu_products.json")
    args = ap.parse_args()
    out_path = check_output_file(args.out, "--out")
    if not cpu_products.enabled():
        print("the CPU kernel is not enabled in this process (see gpt_jax/model/kernels/cpu_products.py)")
        return 1
    rng = np.random.default_rng(0)
    rows = []
    for m in args.rows:
        row = {"rows": m, "chain_24_gpt2_mlp": chain(rng, m)}
        c = row["chain_24_gpt2_mlp"]
        print(f"M={m} chain: xla {c['xla']['weight_gbs']} GB/s, kernel {c['kernel']['weight_gbs']} GB/s", flush=True)
        for name, k, n, weight_rows in SHAPES:
            r = row[name] = one_shape(rng, m, k, n, weight_rows)
            print(f"M={m} {name}: xla {r['xla']['us']} us, kernel {r['kernel']['us']} us "
                  f"({r['kernel_over_xla']}x)", flush=True)
        rows.append(row)
    result = {"machine": platform.processor() or platform.machine(), "jax": jax.__version__, "rows": rows}
    write_text_atomically(out_path, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
