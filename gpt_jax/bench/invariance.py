"""`gpt-jax bench --invariance`: what the exact (row-invariant) arithmetic costs against XLA's fastest, per batch.

Each (arithmetic, batch) runs in a fresh process, alternating the two arithmetics, so first calls compile from
nothing and peak memory is the process's own: the first call (trace, compile, run), the second call's tokens/s and
the peak resident memory. Sampled (temperature 0.8, top-p 0.95), ignore_eos, prompts of 4-10 tokens. The model is
the bundled one, or a random-weight preset shape (`--shape gpt2-small`). Each row also says whether the exact
run's first row equals the same row decoded alone (`row_0_equals_alone`), the promise the arithmetic is for.

    gpt-jax bench --invariance [--shape bundled] [--batches 1 8 64 256] [--new-tokens 32] [--identity] [--out FILE]

`--identity` also checks, in this process, that row 0's decode-step logits are bit-identical at batch 1, 5, 20
and 256, and that a 5-position verification pass (k = 4) gives the logits of five one-token steps, for each
arithmetic (`identity`): the check to run on a new backend, e.g. a GPU.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

from gpt_jax.model.presets import PRESETS
from gpt_jax.util.argparsing import OneLineParser, positive_int
from gpt_jax.util.output_files import check_output_file, write_text_atomically

CHILD = r"""
import json, resource, sys, time
import numpy as np
import gpt_jax
from gpt_jax.model.presets import PRESETS
shape, arithmetic, batch, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if shape == "bundled":
    gen = gpt_jax.load()
else:
    gen = gpt_jax.Generator.from_config(PRESETS[shape], key=0)
gen = gen.with_arithmetic(arithmetic)
rng = np.random.default_rng(0)
prompts = [rng.integers(4, 4000, rng.integers(4, 11)).tolist() for _ in range(batch)]
s = dict(max_new_tokens=new_tokens, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)
t = time.perf_counter(); first = gen.generate_ids(prompts, **s); first_s = time.perf_counter() - t
runs = []
for _ in range(2):
    t = time.perf_counter(); again = gen.generate_ids(prompts, **s); runs.append(time.perf_counter() - t)
assert again.token_ids == first.token_ids
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
alone = gen.generate_ids(prompts[:1], **s).token_ids[0] == first.token_ids[0]
print(json.dumps({"shape": shape, "arithmetic": arithmetic, "batch": batch, "new_tokens": new_tokens,
                  "first_call_s": round(first_s, 2), "tokens_per_s": round(batch * new_tokens / min(runs), 1),
                  "peak_rss_gb": round(peak, 2), "row_0_equals_alone": alone}))
"""


def load(shape: str):
    """The bundled model, or random weights of a preset shape."""
    import gpt_jax

    return gpt_jax.load() if shape == "bundled" else gpt_jax.Generator.from_config(PRESETS[shape], key=0)


def parser() -> OneLineParser:
    p = OneLineParser(prog="gpt-jax bench --invariance", description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="bundled", choices=["bundled", *PRESETS], help="a preset: random weights")
    p.add_argument("--batches", nargs="+", type=positive_int, default=[1, 8, 64, 256])
    p.add_argument("--new-tokens", type=positive_int, default=32)
    p.add_argument("--identity", action="store_true", help="also check bit-identity here (see above)")
    p.add_argument("--out", default="benchmarks/results/invariance.json")
    return p


def identity(gen, batches=(1, 5, 20, 256), k: int = 4, prompt_len: int = 24) -> dict:
    """Whether row 0's logits stay bit-identical across batch sizes and across a k + 1-position verification pass
    against k + 1 one-token steps, with the largest difference seen (0.0 where identical)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gpt_jax.decoding import loop
    from gpt_jax.model.row_invariant import ForwardMode

    feed = jax.jit(loop.feed, static_argnums=(0, 5))
    rng = np.random.default_rng(0)
    vocab = gen.config.vocab_size
    prompt = jnp.asarray([rng.integers(3, vocab, prompt_len)], jnp.int32)
    fed = jnp.asarray(rng.integers(3, vocab, (max(batches), k + 1)), jnp.int32)
    empty = gen.programs.new_cache(1, prompt_len + k + 8)
    _, one = feed(gen.programs.logits_fn, gen.params, prompt, jnp.zeros((1,), jnp.int32), empty, ForwardMode.PREFILL)

    def logits(rows, tokens, mode, cache=None):
        cache = cache or jax.tree.map(lambda a: jnp.concatenate([a] * rows, axis=0) if a.ndim else a, one)
        out, cache = feed(gen.programs.logits_fn, gen.params, tokens, jnp.zeros((rows,), jnp.int32), cache, mode)
        return np.asarray(out), cache

    def gap(a, b):
        return float(np.max(np.abs(a - b)))

    alone = logits(1, fed[:1, :1], ForwardMode.DECODE)[0][0, 0]
    by_batch = {b: gap(logits(b, fed[:b, :1], ForwardMode.DECODE)[0][0, 0], alone) for b in batches}
    steps, cache = [], None
    for j in range(k + 1):
        out, cache = logits(1, fed[:1, j : j + 1], ForwardMode.DECODE, cache)
        steps.append(out[0, 0])
    wide = logits(1, fed[:1], ForwardMode.VERIFY)[0][0]
    verify = max(gap(wide[j], steps[j]) for j in range(k + 1))
    return {
        "arithmetic": gen.arithmetic,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "max_abs_difference_by_batch": by_batch,
        f"max_abs_difference_verify_k{k}": verify,
        "bit_identical": all(v == 0.0 for v in by_batch.values()) and verify == 0.0,
    }


def measure(shape: str, arithmetic: str, batch: int, new_tokens: int) -> dict:
    """One configuration in a fresh process (see CHILD)."""
    argv = [sys.executable, "-c", CHILD, shape, arithmetic, str(batch), str(new_tokens)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        return {"shape": shape, "arithmetic": arithmetic, "batch": batch, "error": done.stderr.strip()[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Markdown: per batch, exact against fast."""
    by = {(r["batch"], r["arithmetic"]): r for r in rows}
    lines = [
        "| batch | first call s, exact / fast | tokens/s, exact / fast | ratio | peak GB, exact / fast "
        "| row 0 as alone |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for batch in sorted({r["batch"] for r in rows}):
        e, f = by.get((batch, "exact"), {}), by.get((batch, "fast"), {})
        ratio = f"{e['tokens_per_s'] / f['tokens_per_s']:.2f}x" if "tokens_per_s" in e and "tokens_per_s" in f else "-"
        cell = lambda key: f"{e.get(key, '-')} / {f.get(key, '-')}"
        same = f"{e.get('row_0_equals_alone', '-')} / {f.get('row_0_equals_alone', '-')}"
        cells = [str(batch), cell("first_call_s"), cell("tokens_per_s"), ratio, cell("peak_rss_gb"), same]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_output_file(args.out, "--out")
    rows = []
    for batch in args.batches:
        for arithmetic in ("exact", "fast"):
            rows.append(measure(args.shape, arithmetic, batch, args.new_tokens))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    report = {"machine": platform.processor() or platform.machine(), "rows": rows}
    if args.identity:
        gen = load(args.shape)
        report["identity"] = [identity(gen.with_arithmetic(a)) for a in ("exact", "fast")]
        for line in report["identity"]:
            print(json.dumps(line))
    write_text_atomically(args.out, json.dumps(report, indent=1) + "\n")
    return 0
