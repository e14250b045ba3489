"""`gpt-jax bench-serve`: the server under Poisson arrivals against static batching of the same requests.

Requests arrive as a Poisson process at each rate (`--workload chat`: multi-turn conversations with the prefix cache
and without it instead, `serving_chat`; `--workload context`: short requests on a long and a short `--max-len`,
`serving_context`). Prompts are corpus slices of uniformly drawn length; output
lengths are drawn from a geometric distribution (long-tailed, as chat replies are), and each request generates
exactly that many tokens (min_tokens = max_tokens), so both sides do the same work. The server side streams every
request over HTTP (httpx) from this process; the static side runs `generate_ids` on batches of `slots` requests in
arrival order, a batch starting when its last request has arrived and the previous batch is done (its tokens all
arrive when the batch ends). Reported per rate and side: output tokens/s over the whole run, time to first token
and time per output token (p50, p99). Writes JSON and a PNG plot.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from gpt_jax.bench.corpus import add_corpus_flag, corpus_file
from gpt_jax.errors import InputError
from gpt_jax.util.argparsing import OneLineParser, positive_int
from gpt_jax.util.output_files import check_output_file, write_bytes_atomically, write_text_atomically


def make_requests(
    tokenizer, count: int, seed: int, prompt_range, mean_output: float, context: int, corpus: Path
) -> list[dict]:
    """Arrival-ordered requests: prompt ids (slices of `corpus`), output length, Poisson arrival offsets for rate 1
    (scaled later)."""
    from gpt_jax.training.corpus import read_text

    rng = np.random.default_rng(seed)
    corpus = tokenizer.encode(read_text(corpus)[:200_000])
    gaps = rng.exponential(1.0, count)
    requests = []
    for i in range(count):
        length = int(rng.integers(prompt_range[0], prompt_range[1] + 1))
        start = int(rng.integers(0, len(corpus) - length))
        output = int(min(rng.geometric(1.0 / mean_output), context - length))
        requests.append(
            {"prompt": corpus[start : start + length], "output": output, "seed": i, "at": float(gaps[: i + 1].sum())}
        )
    return requests


def machine() -> dict:
    """What ran the benchmark: platform, CPU model and count, AVX-512 or not, the JAX device."""
    import os

    import jax

    cpu, flags = platform.processor() or "?", ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "avx512": " avx512f" in flags,
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
    }


def long_context_llama(context: int):
    """The random Llama shape the serving benchmarks use: 4 layers, width 256, 4 heads, 2 kv heads, MLP 768,
    vocabulary 4000 (the bundled tokenizer's size), `context` positions."""
    from gpt_jax.model.presets import PRESETS

    return PRESETS["llama-small"].replace(
        n_layers=4, d_model=256, n_heads=4, n_kv_heads=2, mlp_dim=768, vocab_size=4000, max_seq_len=context
    )


def percentiles(values) -> dict:
    values = np.asarray(values, float)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def summarize(records: list[dict], start: float) -> dict:
    """records: arrival, first, end (seconds) and tokens of each request."""
    tokens = sum(r["tokens"] for r in records)
    span = max(r["end"] for r in records) - start
    ttft = [r["first"] - r["arrival"] for r in records]
    tpot = [(r["end"] - r["first"]) / (r["tokens"] - 1) for r in records if r["tokens"] > 1]
    return {
        "output_tokens_per_s": tokens / span,
        "ttft_s": percentiles(ttft),
        "tpot_s": percentiles(tpot),
        "seconds": span,
        "output_tokens": tokens,
    }


async def run_server_side(url: str, model: str, requests: list[dict], rate: float) -> dict:
    import httpx

    async def one(client, request, start):
        await asyncio.sleep(max(0.0, start + request["at"] / rate - time.perf_counter()))
        arrival = time.perf_counter()
        body = {
            "model": model,
            "prompt": request["prompt"],
            "max_tokens": request["output"],
            "stream": True,
            "min_tokens": request["output"],
            "temperature": 1.0,
            "seed": request["seed"],
            "logprobs": 0,
        }
        first, tokens = None, 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"the server answered {response.status_code}: {await response.aread()}")
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    count = len(json.loads(line[6:])["choices"][0]["logprobs"]["tokens"])
                    if count and first is None:
                        first = time.perf_counter()
                    tokens += count
        return {"arrival": arrival, "first": first, "end": time.perf_counter(), "tokens": tokens}

    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        start = time.perf_counter()
        records = await asyncio.gather(*(one(client, r, start) for r in requests))
    return summarize(records, start)


def run_static_side(gen, requests: list[dict], rate: float, batch: int) -> dict:
    records, start, free_at = [], time.perf_counter(), 0.0
    for b in range(0, len(requests), batch):
        group = requests[b : b + batch]
        ready = start + group[-1]["at"] / rate
        time.sleep(max(0.0, ready - time.perf_counter()))
        outputs = [r["output"] for r in group]
        result = gen.generate_ids(
            [r["prompt"] for r in group],
            max_new_tokens=outputs,
            min_new_tokens=outputs,
            temperature=1.0,
            top_p=1.0,
            seed=0,
        )
        free_at = time.perf_counter()
        for r, ids in zip(group, result.token_ids):
            records.append({"arrival": start + r["at"] / rate, "first": free_at, "end": free_at, "tokens": len(ids)})
    return summarize(records, start)


def pyplot():
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """`fig` as an image at `path` (its suffix names the format, PNG by default), written atomically."""
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    write_bytes_atomically(path, image.getvalue())


def check_report_paths(args) -> None:
    """--json, and --plot unless it is '', must be writable files (before anything runs)."""
    check_output_file(args.json, "--json")
    if args.plot:
        check_output_file(args.plot, "--plot")


def plot(results: list[dict], path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    for side, marker in (("continuous", "o-"), ("static", "s--")):
        xs = [r[side]["output_tokens_per_s"] for r in results]
        for ax, metric in zip(axes, ("p50", "p99")):
            ax.plot(xs, [r[side]["ttft_s"][metric] for r in results], marker, label=side)
            for x, r in zip(xs, results):
                ax.annotate(f"{r['rate']:g}/s", (x, r[side]["ttft_s"][metric]), fontsize=7)
    for ax, metric in zip(axes, ("p50", "p99")):
        ax.set(xlabel="output tokens/s", ylabel=f"time to first token, {metric} (s)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("gpt-jax serve: continuous vs static batching (labels: arrival rate)")
    fig.tight_layout()
    save_figure(fig, path)


def parser() -> OneLineParser:
    p = OneLineParser(prog="gpt-jax bench-serve", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--workload",
        choices=["poisson", "chat", "context"],
        default="poisson",
        help="poisson: this page's requests; chat: conversations sharing a system prompt, with the prefix cache and "
        "without (gpt-jax bench-serve --workload chat --help); context: short requests on a long --max-len against "
        "a short one (--workload context --help)",
    )
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--rates", default="4,8,16,32", help="arrival rates, requests per second, comma-separated")
    p.add_argument("--requests", type=positive_int, default=96, help="requests per rate")
    p.add_argument("--slots", type=positive_int, default=8, help="server slots = static batch size")
    p.add_argument("--prompt-tokens", default="8,64", help="prompt lengths, uniform in [low, high]")
    p.add_argument("--mean-output", type=float, default=64.0, help="mean of the geometric output lengths")
    p.add_argument("--seed", type=int, default=0)
    add_corpus_flag(p)
    p.add_argument("--json", default="benchmarks/results/serve.json", help="where to write the results")
    p.add_argument("--plot", default="docs/serve.png", help="where to write the plot ('' for none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rates = [float(x) for x in args.rates.split(",")]
        low, high = (int(x) for x in args.prompt_tokens.split(","))
    except ValueError:
        raise InputError("--rates takes numbers like 4,8,16 and --prompt-tokens two integers like 8,64") from None
    finite = all(math.isfinite(x) for x in [*rates, args.mean_output])
    if not (rates and finite and all(r > 0 for r in rates) and 1 <= low <= high and args.mean_output >= 1):
        raise InputError("--rates must be positive, --prompt-tokens 1 <= low <= high, --mean-output >= 1 (finite)")
    if not 0 <= args.seed < 2**31:
        raise InputError(f"--seed must be an integer in [0, 2**31), got {args.seed}")
    check_report_paths(args)
    corpus = corpus_file(args.corpus)
    return run(args, rates, (low, high), corpus)


def run(args, rates: list[float], prompt_tokens: tuple[int, int], corpus) -> int:
    """The benchmark itself, on checked arguments."""

    import gpt_jax
    from gpt_jax.serving.run import BackgroundServer

    gen = gpt_jax.load(args.model)
    requests = make_requests(
        gen.tokenizer, args.requests, args.seed, prompt_tokens, args.mean_output, gen.config.max_seq_len, corpus
    )
    server = BackgroundServer(gen, "bench", slots=args.slots, max_queue=len(requests))
    try:
        warm = [dict(r, at=0.0) for r in requests]
        asyncio.run(run_server_side(server.url, "bench", warm, 1.0))  # compiles every prefill bucket
        run_static_side(gen, warm, 1e9, args.slots)
        results = []
        for rate in rates:
            row = {"rate": rate, "continuous": asyncio.run(run_server_side(server.url, "bench", requests, rate))}
            row["static"] = run_static_side(gen, requests, rate, args.slots)
            row["throughput_ratio"] = row["continuous"]["output_tokens_per_s"] / row["static"]["output_tokens_per_s"]
            results.append(row)
            c, s = row["continuous"], row["static"]
            print(
                f"rate {rate:g}/s: continuous {c['output_tokens_per_s']:.0f} tok/s (TTFT p50 {c['ttft_s']['p50']:.3f} "
                f"p99 {c['ttft_s']['p99']:.3f} s, TPOT p50 {c['tpot_s']['p50'] * 1e3:.1f} ms) | static "
                f"{s['output_tokens_per_s']:.0f} tok/s (TTFT p50 {s['ttft_s']['p50']:.3f} "
                f"p99 {s['ttft_s']['p99']:.3f} s)"
                f" | {row['throughput_ratio']:.2f}x",
                flush=True,
            )
    finally:
        server.stop()
    report = {
        "machine": machine(),
        "settings": {k: getattr(args, k) for k in ("requests", "slots", "prompt_tokens", "mean_output", "seed")},
        "results": results,
    }
    write_text_atomically(args.json, json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(results, Path(args.plot))
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0
