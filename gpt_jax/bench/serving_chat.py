"""`gpt-jax bench-serve --workload chat`: multi-turn conversations that share a system prompt, served with the
prefix cache and without it, in one run.

Each conversation starts at a Poisson arrival time and sends its turns one after another: turn t's prompt is the
shared system prompt, then every earlier turn's user message and reply, then a new user message (corpus slices);
each reply is exactly `--reply-tokens` long (min_tokens = max_tokens), sampled with the conversation's seed, so
both servers do the same work and, the cache being exact, produce the same tokens. The two servers run one after
the other on the same model in this process, each after a warm-up round that compiles its programs (the cache is
emptied after it). Reported per side: time to first token (p50, p99) over every turn, output tokens/s over the
run, and for the cached side the prompt tokens found in the cache out of those looked up.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from gpt_jax.bench.serving import check_report_paths, long_context_llama, machine, percentiles, pyplot, save_figure
from gpt_jax.util.output_files import write_text_atomically


def make_conversations(tokenizer, corpus_ids: list[int], args) -> dict:
    """The shared system prompt and, per conversation, its arrival (rate 1), seed and user messages (ids)."""
    rng = np.random.default_rng(args.seed)
    start = int(rng.integers(0, len(corpus_ids) - args.system_tokens))
    system = [tokenizer.bos_id, *corpus_ids[start : start + args.system_tokens]]
    gaps = rng.exponential(1.0, args.conversations)
    conversations = []
    for c in range(args.conversations):
        messages = []
        for _ in range(args.turns):
            length = int(rng.integers(args.user_tokens[0], args.user_tokens[1] + 1))
            at = int(rng.integers(0, len(corpus_ids) - length))
            messages.append(corpus_ids[at : at + length])
        conversations.append({"at": float(gaps[: c + 1].sum()), "seed": c, "messages": messages})
    return {"system": system, "conversations": conversations}


async def run_conversations(url: str, workload: dict, rate: float, reply_tokens: int) -> dict:
    """Every conversation against the server at `url`; returns the per-turn records and each reply's tokens."""
    import httpx

    async def turn(client, prompt, seed):
        body = {
            "model": "bench", "prompt": prompt, "max_tokens": reply_tokens, "min_tokens": reply_tokens,
            "temperature": 1.0, "seed": seed, "stream": True, "return_token_ids": True,
        }  # fmt: skip
        arrival, first, ids = time.perf_counter(), None, []
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"the server answered {response.status_code}: {await response.aread()}")
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    new = json.loads(line[6:])["choices"][0].get("token_ids") or []
                    if new and first is None:
                        first = time.perf_counter()
                    ids += new
        return {"arrival": arrival, "first": first, "end": time.perf_counter(), "ids": ids, "prompt": len(prompt)}

    async def conversation(client, conv, start):
        await asyncio.sleep(max(0.0, start + conv["at"] / rate - time.perf_counter()))
        history, records = list(workload["system"]), []
        for t, message in enumerate(conv["messages"]):
            history += message
            record = await turn(client, history, conv["seed"] * 1000 + t)
            history += record["ids"]
            records.append(record)
        return records

    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        start = time.perf_counter()
        done = await asyncio.gather(*(conversation(client, c, start) for c in workload["conversations"]))
    records = [r for conv in done for r in conv]
    span = max(r["end"] for r in records) - start
    return {
        "ttft_s": percentiles([r["first"] - r["arrival"] for r in records]),
        "output_tokens_per_s": sum(len(r["ids"]) for r in records) / span,
        "seconds": span,
        "turns": len(records),
        "prompt_tokens": sum(r["prompt"] for r in records),
        "replies": [r["ids"] for r in records],
    }


def serve_side(gen, workload: dict, args, prefix_cache_gb: float) -> dict:
    """One server (the prefix cache's budget `prefix_cache_gb`, 0: none): a warm-up round, then the measured one."""
    from gpt_jax.serving.run import BackgroundServer

    options = {"slots": args.slots, "max_queue": 4 * args.conversations, "chunk": args.chunk}
    server = BackgroundServer(gen, "bench", max_len=args.max_len, prefix_cache_gb=prefix_cache_gb, **options)
    try:
        asyncio.run(run_conversations(server.url, workload, 1e9, args.reply_tokens))  # compiles
        cache = server.engine.prefix_cache
        cache.blocks.clear()
        queried, hits = cache.queried_tokens, cache.hit_tokens
        result = asyncio.run(run_conversations(server.url, workload, args.rate, args.reply_tokens))
        result["cache_lookups_tokens"] = cache.queried_tokens - queried
        result["cache_hit_tokens"] = cache.hit_tokens - hits
        result["hit_rate"] = result["cache_hit_tokens"] / max(1, result["cache_lookups_tokens"])
        result["cache_bytes"] = cache.used_bytes
    finally:
        server.stop()
    return result


def run_chat(gen, corpus_ids: list[int], args, model: str) -> dict:
    """Both sides on `gen`; prints a line each and returns the report (written to --json by the caller)."""
    workload = make_conversations(gen.tokenizer, corpus_ids, args)
    sides = {}
    for name, budget in (("prefix cache", args.prefix_cache_gb), ("no prefix cache", 0.0)):
        sides[name] = side = serve_side(gen, workload, args, budget)
        print(
            f"{name}: TTFT p50 {side['ttft_s']['p50']:.3f} s p99 {side['ttft_s']['p99']:.3f} s, "
            f"{side['output_tokens_per_s']:.0f} output tok/s, {side['turns']} turns, "
            f"hit rate {side['hit_rate']:.1%} ({side['cache_hit_tokens']} of {side['cache_lookups_tokens']} tokens)",
            flush=True,
        )
    on, off = sides["prefix cache"], sides["no prefix cache"]
    same = on.pop("replies") == off.pop("replies")
    ratio = off["ttft_s"]["p50"] / on["ttft_s"]["p50"]
    print(f"TTFT p50 {ratio:.1f}x lower with the prefix cache; the same replies: {same}", flush=True)
    settings = {
        k: getattr(args, k)
        for k in ("conversations", "turns", "system_tokens", "user_tokens", "reply_tokens", "rate", "slots", "seed")
    }
    return {
        "machine": machine(),
        "model": model,
        "settings": {**settings, "chunk": args.chunk, "max_len": args.max_len},
        "sides": sides,
        "ttft_p50_ratio": ratio,
        "throughput_ratio": on["output_tokens_per_s"] / off["output_tokens_per_s"],
        "same_replies": same,
    }


def plot_chat(report: dict, path) -> None:
    names = list(report["sides"])
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.6))
    for i, metric in enumerate(("p50", "p99")):
        axes[0].bar([j + 0.4 * i for j in range(2)], [report["sides"][n]["ttft_s"][metric] for n in names], 0.4,
                    label=metric)  # fmt: skip
    axes[0].set(xticks=[0.2, 1.2], xticklabels=names, ylabel="time to first token (s)")
    axes[0].legend()
    axes[1].bar(names, [report["sides"][n]["output_tokens_per_s"] for n in names])
    axes[1].set(ylabel="output tokens/s")
    s = report["settings"]
    fig.suptitle(
        f"{report['model']}: {s['conversations']} chats x {s['turns']} turns, shared {s['system_tokens']}-token "
        f"system prompt (hit rate {report['sides']['prefix cache']['hit_rate']:.0%})",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def write_report(report: dict, json_path, plot_path) -> None:
    write_text_atomically(json_path, json.dumps(report, indent=1) + "\n")
    if plot_path:
        plot_chat(report, plot_path)


def parser():
    from gpt_jax.bench.corpus import add_corpus_flag
    from gpt_jax.serving.prefix_cache import DEFAULT_BUDGET_GB
    from gpt_jax.util.argparsing import OneLineParser, non_negative_float, positive_int

    p = OneLineParser(prog="gpt-jax bench-serve --workload chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=["chat"], default="chat")
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument(
        "--random-llama", type=positive_int, default=None, metavar="CONTEXT",
        help="a random Llama-shaped model instead (4 layers, width 256, 2 kv heads) of CONTEXT positions",
    )  # fmt: skip
    p.add_argument("--conversations", type=positive_int, default=8)
    p.add_argument("--turns", type=positive_int, default=4, help="turns per conversation")
    p.add_argument("--system-tokens", type=positive_int, default=1500, help="the shared system prompt's length")
    p.add_argument("--user-tokens", default="16,64", help="user message lengths, uniform in [low, high]")
    p.add_argument("--reply-tokens", type=positive_int, default=32)
    p.add_argument("--rate", type=float, default=1.0, help="conversations starting per second (Poisson)")
    p.add_argument("--slots", type=positive_int, default=8)
    p.add_argument("--max-len", type=positive_int, default=None, help="positions per slot (default: the server's)")
    p.add_argument("--chunk", type=positive_int, default=None, help="prefill chunk and block (default: the server's)")
    p.add_argument("--prefix-cache-gb", type=non_negative_float, default=DEFAULT_BUDGET_GB)
    p.add_argument("--seed", type=int, default=0)
    add_corpus_flag(p)
    p.add_argument("--json", default="benchmarks/results/serve_chat.json", help="where to write the results")
    p.add_argument("--plot", default="docs/serve_chat.png", help="where to write the plot ('' for none)")
    return p


def load_model(args):
    """The bundled model, --model's, or a random Llama-shaped one of --random-llama positions; and its name."""
    import gpt_jax

    if args.random_llama is None:
        return gpt_jax.load(args.model), args.model or "bundled model"
    config = long_context_llama(args.random_llama)
    gen = gpt_jax.Generator.from_config(config, key=0, tokenizer=gpt_jax.load().tokenizer)
    return gen, f"random Llama shape, {args.random_llama} positions"


def main(argv: list[str]) -> int:
    import math

    from gpt_jax.bench.corpus import corpus_file
    from gpt_jax.errors import InputError
    from gpt_jax.training.corpus import read_text

    args = parser().parse_args(argv)
    try:
        args.user_tokens = tuple(int(x) for x in args.user_tokens.split(","))
        low, high = args.user_tokens
    except ValueError:
        raise InputError("--user-tokens takes two integers like 16,64") from None
    if not (1 <= low <= high and math.isfinite(args.rate) and args.rate > 0 and 0 <= args.seed < 2**31):
        raise InputError("--user-tokens needs 1 <= low <= high, --rate a positive number, --seed in [0, 2**31)")
    check_report_paths(args)
    corpus = corpus_file(args.corpus)
    gen, model = load_model(args)
    longest = args.system_tokens + 1 + args.turns * (high + args.reply_tokens)
    context = args.max_len or min(gen.config.max_seq_len, 4096)
    if longest > context:
        raise InputError(
            f"a conversation may reach {longest} tokens, more than the {context} positions of a slot: lower "
            "--system-tokens, --turns, --user-tokens or --reply-tokens, or raise --max-len"
        )
    corpus_ids = gen.tokenizer.encode(read_text(corpus)[:400_000], add_special_tokens=False)
    write_report(run_chat(gen, corpus_ids, args, model), args.json, args.plot)
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0
