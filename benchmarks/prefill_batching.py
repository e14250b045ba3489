"""Would prefilling short prompts together keep each one's bits? The engine's prefill program on R prompts of one
bucket T (left-padded, lengths T/2+1 .. T) at once against each alone: are each row's first-token logits and
last-layer keys the same bits, and what does each way take (mean of 20 runs after one warm-up).

    python benchmarks/prefill_batching.py [llama]   # the bundled model, or a random 4-layer Llama of width 256

Prints a line per (T, R) and writes benchmarks/results/prefill_batching[_llama].json.
"""
import json, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np, jax, gpt_jax  # noqa: E402
from gpt_jax.bench.serving import machine  # noqa: E402
from gpt_jax.serving.engine import slot_programs  # noqa: E402
from gpt_jax.model.presets import PRESETS  # noqa: E402

rows_out = []
if sys.argv[1:] == ["llama"]:
    cfg = PRESETS["llama-small"].replace(n_layers=4, d_model=256, n_heads=4, n_kv_heads=2, mlp_dim=768, vocab_size=4000, max_seq_len=8192)
    gen = gpt_jax.Generator.from_config(cfg, key=0)
else:
    gen = gpt_jax.load()
pr = slot_programs(gen, 8, 256)
rng = np.random.default_rng(0)
for T in (16, 32, 64):
    lengths = rng.integers(T // 2 + 1, T + 1, 8)
    toks = np.full((8, T), 3, np.int32); pads = (T - lengths).astype(np.int32)
    for r, L in enumerate(lengths):
        toks[r, T - L:] = rng.integers(4, 3000, L)
    def run(rows):
        cache = pr.new_cache(len(rows), T).replace(index=np.int32(0))
        logits, cache, _ = pr.prefill(gen.params, toks[rows], pads[rows], cache, toks[rows], np.int32(T - 1))
        return np.asarray(logits), [np.asarray(k) for k in cache.k]
    alone = [run([r]) for r in range(8)]
    for R in (2, 4, 8):
        lg, ks = run(list(range(R)))
        same = all(np.array_equal(lg[r], alone[r][0][0]) for r in range(R))
        kv = gen.config.n_kv_heads
        same_k = all(np.array_equal(ks[-1][r*kv:(r+1)*kv], alone[r][1][-1]) for r in range(R))
        diff = max(float(np.abs(lg[r] - alone[r][0][0]).max()) for r in range(R))
        # timing
        def timeit(f, n=20):
            f(); t = time.perf_counter()
            for _ in range(n): f()
            return (time.perf_counter() - t) / n
        one_by_one = timeit(lambda: [jax.block_until_ready(run([r])[0]) for r in range(R)])
        together = timeit(lambda: jax.block_until_ready(run(list(range(R)))[0]))
        print(f"T={T} R={R}: logits same bits {same}, last-layer keys same {same_k}, max |diff| {diff:.2e}; "
              f"one by one {one_by_one*1e3:.1f} ms, together {together*1e3:.1f} ms ({one_by_one/together:.2f}x)")
        rows_out.append({"bucket": T, "prompts": R, "same_logits": bool(same), "same_keys": bool(same_k),
                         "max_abs_diff": diff, "one_by_one_ms": one_by_one * 1e3, "together_ms": together * 1e3})
name = "prefill_batching" + ("_llama" if sys.argv[1:] == ["llama"] else "") + ".json"
Path("benchmarks/results", name).write_text(json.dumps({"machine": machine(), "rows": rows_out}, indent=1) + "\n")
