"""The mixture-of-experts layer (moe.py) timed against the alternatives, in the same run.

    python benchmarks/moe_layer.py [--out benchmarks/results/moe_layer.json]

Mixtral's proportions scaled down (8 experts, 2 per token, width 1024, expert MLP 3584, fp32). For M tokens, the
median time over 20 calls of each jitted variant:
  switched   - each (token, expert) pair a lax.switch over the experts: only the chosen run (moe.py, M * 2 < 8)
  all        - every expert on every token, weighted by the routing (moe.py otherwise)
  ragged_dot - pairs sorted by expert, one jax.lax.ragged_dot per projection over stacked [E, ...] kernels
  dense_k    - one plain SwiGLU MLP as wide as the 2 chosen experts: the work really needed
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

E, K, D, F = 8, 2, 1024, 3584
act = jax.nn.silu


def timed(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def expert(w, x):
    gate, up, down = w
    return (act(x @ gate) * (x @ up)) @ down


def switched(x, chosen, probs, experts):
    branches = [lambda rows, w=w: expert(w, rows) for w in experts]
    out = jnp.zeros_like(x)
    for m in range(x.shape[0]):
        for j in range(K):
            out = out.at[m].add(probs[m, j] * jax.lax.switch(chosen[m, j], branches, x[m : m + 1])[0])
    return out


def every(x, chosen, probs, experts):
    routing = jnp.zeros((x.shape[0], E)).at[jnp.arange(x.shape[0])[:, None], chosen].add(probs)
    return sum(routing[:, i : i + 1] * expert(w, x) for i, w in enumerate(experts))


def ragged(x, chosen, probs, stacked):
    gate, up, down = stacked
    order = jnp.argsort(chosen.reshape(-1), stable=True)
    token_of = order // K
    sizes = jnp.bincount(chosen.reshape(-1), length=E).astype(jnp.int32)
    xs = x[token_of]
    hidden = act(jax.lax.ragged_dot(xs, gate, sizes)) * jax.lax.ragged_dot(xs, up, sizes)
    out = jax.lax.ragged_dot(hidden, down, sizes) * probs.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[token_of].add(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/moe_layer.json")
    args = ap.parse_args()
    keys = iter(jax.random.split(jax.random.key(0), 3 * E + 3 + 5 * 600))
    shapes = ((D, F), (D, F), (F, D))
    experts = [tuple(jax.random.normal(next(keys), s) * 0.02 for s in shapes) for _ in range(E)]
    stacked = tuple(jnp.stack([w[i] for w in experts]) for i in range(3))
    wide = tuple(
        jax.random.normal(next(keys), (a * (K if a == F else 1), b * (K if b == F else 1))) * 0.02 for a, b in shapes
    )
    rows = []
    for m in (1, 2, 3, 64, 512):
        x = jax.random.normal(next(keys), (m, D))
        chosen = jnp.stack([jax.random.permutation(next(keys), E)[:K] for _ in range(m)])  # distinct per token
        probs = jnp.full((m, K), 1.0 / K)
        row = {"tokens": m}
        if m * K < E:
            row["switched_ms"] = timed(jax.jit(switched), x, chosen, probs, experts)
        row["all_ms"] = timed(jax.jit(every), x, chosen, probs, experts)
        row["ragged_dot_ms"] = timed(jax.jit(ragged), x, chosen, probs, stacked)
        row["dense_k_ms"] = timed(jax.jit(expert), wide, x)
        rows.append(row)
        print(json.dumps(row))
    result = {
        "shape": {"experts": E, "per_token": K, "width": D, "expert_mlp": F, "dtype": "float32"},
        "rows": rows,
        "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
