"""Decode benchmark: gpt_jax against transformers (PyTorch) on identical random weights.

    gpt-jax bench [--shapes gpt2-small llama-small] [--prompt-lens 32 512] [--batches 1 8 32] [--modes greedy top-p]
                  [--new-tokens 128] [--repeats 3] [--fast] [--int8] [--llama-cpp DIR]
                  [--out benchmarks/results/decode.json]

For each setting both engines run alternately `--repeats` times; medians are reported. Decode time is the time of a
128-token generation minus the time of a 1-token one (prefill plus one step), so ms/step excludes the prompt.
The bandwidth roofline (batch * read bandwidth / weight bytes) uses the best multi-threaded read bandwidth measured in
the same run (see `read_bandwidth_gbs`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gpt_jax.model.presets import PRESETS
from gpt_jax.util.argparsing import OneLineParser, positive_int
from gpt_jax.util.output_files import check_output_file, write_text_atomically

SHAPES = ("gpt2-small", "llama-small", "llama-1b", "gpt2-tiny", "llama-tiny")  # presets; random weights, one per run


def weight_bytes(params, tied: bool) -> int:
    """Bytes a decode step reads for the weights: every parameter once, but the tables it gathers one row of (the
    token embedding where the head is not tied to it, GPT-2's position embedding)."""
    import jax  # imported late, as everywhere here: the thread settings must come first

    gathered = {"pos_embed"} | (set() if tied else {"embed"})
    return sum(x.nbytes for name, tree in params.items() if name not in gathered for x in jax.tree.leaves(tree))


def read_bandwidth_gbs(size_bytes: int = 1 << 29, threads: int | None = None) -> tuple[float, dict[str, float]]:
    """The best read any engine achieves on all cores, in GB/s, and each method's median of five reads.

    Methods: a jitted XLA sum (all cores, the engine gpt_jax runs on), torch's sum with `threads` threads, and
    numpy's single-threaded sum. A single-threaded read understates the limit on machines where one core cannot
    saturate memory, which would put a roofline fraction above 100%.
    """
    import jax
    import jax.numpy as jnp

    def typical(read) -> float:
        read()  # warm-up (and compile)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            read()
            times.append(time.perf_counter() - t)
        return round(size_bytes / statistics.median(times) / 1e9, 1)  # the median: one lucky read is no limit

    host = np.ones(size_bytes // 4, np.float32)
    device = jax.device_put(host)
    xla_sum = jax.jit(jnp.sum)
    results = {
        "xla_sum": typical(lambda: xla_sum(device).block_until_ready()),
        "numpy_sum_1_thread": typical(lambda: host.sum()),
    }
    try:
        import torch

        torch.set_num_threads(threads or os.cpu_count() or 1)
        tensor = torch.from_numpy(host)
        results["torch_sum"] = typical(lambda: tensor.sum())
    except ImportError:
        pass
    return max(results.values()), results


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class JaxEngine:
    def __init__(self, directory: Path, dtype: str, int8: str | None = None, arithmetic: str = "exact"):

        import gpt_jax

        self.gen = gpt_jax.load(directory, dtype=dtype).with_arithmetic(arithmetic)
        self.name = "gpt_jax" if arithmetic == "exact" else f"gpt_jax_{arithmetic}"
        if int8 == "weights":
            self.gen, self.name = self.gen.quantize_int8(), "gpt_jax_int8"
        elif int8 == "dynamic":
            self.gen, self.name = self.gen.quantize_int8(activations=True), "gpt_jax_w8a8"
        self.weight_bytes = weight_bytes(self.gen.params, self.gen.config.tie_embeddings)

    def run(self, prompts, new_tokens, mode):
        kw = dict(temperature=0.0) if mode == "greedy" else dict(temperature=1.0, top_p=0.95)
        t = time.perf_counter()
        out = self.gen.generate_ids(prompts, max_new_tokens=new_tokens, ignore_eos=True, seed=0, **kw)
        elapsed = time.perf_counter() - t
        assert all(len(x) == new_tokens for x in out.token_ids)
        return elapsed


class TorchEngine:
    name = "transformers"

    def __init__(self, directory: Path, dtype: str, threads: int):
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch = torch
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype).eval()

    def run(self, prompts, new_tokens, mode):
        torch = self.torch
        t_max = max(map(len, prompts))
        ids = torch.tensor([[0] * (t_max - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (t_max - len(p)) + [1] * len(p) for p in prompts])
        kw = dict(do_sample=False) if mode == "greedy" else dict(do_sample=True, top_p=0.95, top_k=0, temperature=1.0)
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
                **kw,
            )
        elapsed = time.perf_counter() - t
        assert out.shape[1] == t_max + new_tokens
        return elapsed


def make_checkpoint(shape: str, directory: Path) -> None:
    """A random-weight transformers model of the preset `shape`, saved with save_pretrained."""
    import torch
    import transformers

    from gpt_jax.checkpoints.hf.export import hf_config

    config = dict(hf_config(PRESETS[shape].replace(dtype="float32")), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(directory))
    model.save_pretrained(directory, safe_serialization=True)


def measure(engine, prompts, new_tokens, mode) -> dict:
    """First call (compile + run) and one steady-state pair of runs: 1 token and new_tokens."""
    return {"prefill_s": engine.run(prompts, 1, mode), "total_s": engine.run(prompts, new_tokens, mode)}


def bench(args) -> dict:
    bandwidth, by_method = read_bandwidth_gbs(threads=args.threads)
    print(f"read bandwidth: {bandwidth:.1f} GB/s (best of {by_method})", file=sys.stderr)
    rows = []
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            make_checkpoint(shape, Path(tmp))
            engines = [JaxEngine(Path(tmp), args.dtype), TorchEngine(Path(tmp), args.dtype, args.threads)]
            if args.fast:
                engines.append(JaxEngine(Path(tmp), args.dtype, arithmetic="fast"))
            if args.llama_cpp:
                from gpt_jax.bench.llama_cpp import LlamaCppEngine

                engines.append(LlamaCppEngine(Path(tmp), args.dtype, args.threads, args.llama_cpp))
            if args.int8:
                engines += [JaxEngine(Path(tmp), args.dtype, int8=m) for m in ("weights", "dynamic")]
            rng = np.random.default_rng(0)
            for prompt_len in args.prompt_lens:
                for batch in args.batches:
                    top = min(1000, PRESETS[shape].vocab_size)
                    prompts = [rng.integers(3, top, prompt_len).tolist() for _ in range(batch)]
                    for mode in args.modes:
                        first = {}
                        for e in engines:  # first call: compile (jax) plus one run
                            t = time.perf_counter()
                            e.run(prompts, args.new_tokens, mode)
                            first[e.name] = time.perf_counter() - t
                            e.run(prompts, 1, mode)
                        runs = {e.name: [] for e in engines}
                        for _ in range(args.repeats):  # alternate the engines
                            for e in engines:
                                runs[e.name].append(measure(e, prompts, args.new_tokens, mode))
                        row = {
                            "shape": shape,
                            "prompt_len": prompt_len,
                            "batch": batch,
                            "mode": mode,
                            "dtype": args.dtype,
                        }
                        e_bytes = {e.name: getattr(e, "weight_bytes", engines[0].weight_bytes) for e in engines}
                        for name, rs in runs.items():
                            prefill = statistics.median(r["prefill_s"] for r in rs)
                            decode = statistics.median(r["total_s"] - r["prefill_s"] for r in rs)
                            steps = args.new_tokens - 1
                            tps = batch * steps / decode
                            row[name] = {
                                "first_call_s": round(first[name], 3),
                                "prefill_s": round(prefill, 4),
                                "prefill_tokens_per_s": round(batch * prompt_len / prefill, 1),
                                "decode_tokens_per_s": round(tps, 1),
                                "ms_per_step": round(1000 * decode / steps, 2),
                                "roofline_fraction": round(tps / (batch * bandwidth * 1e9 / e_bytes[name]), 3),
                                "weight_mb": round(e_bytes[name] / 2**20, 1),
                            }
                        row["decode_ratio"] = round(
                            row["gpt_jax"]["decode_tokens_per_s"] / row["transformers"]["decode_tokens_per_s"], 2
                        )
                        rows.append(row)
                        print(_format_row(row), file=sys.stderr)
            del engines
    return {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "read_bandwidth_gbs": round(bandwidth, 1),
            "read_bandwidth_by_method_gbs": by_method,
            "python": platform.python_version(),
        },
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "peak_rss_mb": round(peak_rss_mb()),
        "rows": rows,
    }


def _format_row(r: dict) -> str:
    j, t = r["gpt_jax"], r["transformers"]

    def other(name):  # another engine's tok/s (roofline), or -
        q = r.get(name)
        return f"{q['decode_tokens_per_s']} ({q['roofline_fraction']:.0%})" if q else "-"

    return (
        f"| {r['shape']} | {r['prompt_len']} | {r['batch']} | {r['mode']} | {j['decode_tokens_per_s']} | "
        f"{t['decode_tokens_per_s']} | {r['decode_ratio']}x | {j['ms_per_step']} | {t['ms_per_step']} | "
        f"{j['roofline_fraction']:.0%} | {other('gpt_jax_fast')} | {other('llama.cpp')} | "
        f"{other('gpt_jax_int8')} | {other('gpt_jax_w8a8')} | "
        f"{j['prefill_tokens_per_s']} | {t['prefill_tokens_per_s']} | {j['first_call_s']} | {t['first_call_s']} |"
    )


HEADER = (
    "| shape | prompt | batch | mode | gpt_jax tok/s | transformers tok/s | ratio | gpt_jax ms/step | "
    "transformers ms/step | gpt_jax roofline | fast arithmetic tok/s (roofline) | llama.cpp tok/s (roofline) | "
    "int8 weight-only tok/s (roofline) | int8 dynamic tok/s (roofline) | "
    "gpt_jax prefill tok/s | transformers prefill tok/s | gpt_jax first call s | transformers first call s |\n"
    + "|---" * 18
    + "|"
)


def parser() -> OneLineParser:
    ap = OneLineParser(prog="gpt-jax bench", description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["gpt2-small", "llama-small"], choices=SHAPES)
    ap.add_argument("--prompt-lens", nargs="+", type=positive_int, default=[32, 512])
    ap.add_argument("--batches", nargs="+", type=positive_int, default=[1, 8, 32])
    ap.add_argument("--modes", nargs="+", default=["greedy", "top-p"], choices=["greedy", "top-p"])
    ap.add_argument("--new-tokens", type=positive_int, default=128)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count())
    ap.add_argument(
        "--int8", action="store_true", help="also run gpt_jax with int8 weight-only and int8 dynamic quantization"
    )
    ap.add_argument(
        "--fast", action="store_true", help="also run gpt_jax with arithmetic='fast' (not row-invariant)"
    )
    ap.add_argument(
        "--llama-cpp", default=None, metavar="DIR", help="also run llama.cpp from this built source tree (llama_cpp.py)"
    )
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_output_file(args.out, "--out")
    result = bench(args)
    print(HEADER)
    for r in result["rows"]:
        print(_format_row(r))
    write_text_atomically(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
