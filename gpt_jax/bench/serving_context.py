"""`gpt-jax bench-serve --workload context`: what a long `--max-len` costs short requests, against a short one, in
one run.

The same requests (corpus prompts of `--prompt-tokens` tokens, exactly `--new-tokens` sampled tokens each, seeded)
all arrive at once at a server of `--slots` slots and `--max-len` positions (default: the model's context) and at
one of `--short-len` positions, the two taking turns round by round, each with its programs compiled and after two
warm-up rounds (the median of `--rounds` measured rounds is kept). A decode dispatch attends to
the bucket its live slots fill (`serving.slots.attend_bucket`), so the long server should cost about what the short
one does. Reported per side: output tokens/s over the round, time to first token and time per output token (p50,
p99). Writes JSON and a PNG plot.
"""

from __future__ import annotations

import asyncio

from gpt_jax.bench.serving import check_report_paths, machine, make_requests, pyplot, run_server_side, save_figure
from gpt_jax.decoding.batching import MIN_LENGTH_BUCKET, bucket
from gpt_jax.bench.serving_chat import load_model
from gpt_jax.errors import InputError
from gpt_jax.util.output_files import write_text_atomically


def measure_sides(gen, requests: list[dict], slots: int, lengths: tuple[int, int], rounds: int) -> dict:
    """Both servers up at once, each with its programs compiled (every prefill group that can form: which form
    depends on the arrival order) and two warm-up rounds; then `rounds` measured rounds, the servers taking turns
    round by round (so a slow spell of the machine falls on both); per server the round of the median output
    tokens/s."""
    from gpt_jax.serving.run import BackgroundServer

    servers = {}
    try:
        for length in lengths:
            servers[length] = BackgroundServer(gen, "bench", slots=slots, max_queue=len(requests), max_len=length)
        widths = sorted({bucket(len(r["prompt"]), MIN_LENGTH_BUCKET) for r in requests})
        for server in servers.values():
            server.engine.admission.warm(widths)
            for _ in range(2):
                asyncio.run(run_server_side(server.url, "bench", requests, 1e9))
        results = {length: [] for length in lengths}
        for _ in range(rounds):
            for length, server in servers.items():
                results[length].append(asyncio.run(run_server_side(server.url, "bench", requests, 1e9)))
        sides = {}
        for length, server in servers.items():
            side = sorted(results[length], key=lambda r: r["output_tokens_per_s"])[rounds // 2]
            side["rounds_output_tokens_per_s"] = [r["output_tokens_per_s"] for r in results[length]]
            side["decode_programs"] = server.engine.compiled_decode_programs
            sides[f"max_len {length}"] = side
    finally:
        for server in servers.values():
            server.stop()
    return sides


def run_context(gen, args, model: str) -> dict:
    long_len = args.max_len or gen.config.max_seq_len
    requests = make_requests(
        gen.tokenizer, args.requests, args.seed, args.prompt_tokens, 1.0, gen.config.max_seq_len, args.corpus
    )
    for request in requests:
        request["output"] = args.new_tokens
    sides = measure_sides(gen, requests, args.slots, (long_len, args.short_len), args.rounds)
    for name, side in sides.items():
        print(
            f"{name}: {side['output_tokens_per_s']:.0f} output tok/s, TTFT p50 {side['ttft_s']['p50']:.3f} "
            f"s, TPOT p50 {side['tpot_s']['p50'] * 1e3:.1f} ms",
            flush=True,
        )
    long_side, short_side = sides[f"max_len {long_len}"], sides[f"max_len {args.short_len}"]
    ratio = long_side["output_tokens_per_s"] / short_side["output_tokens_per_s"]
    print(f"max_len {long_len} / {args.short_len}: {ratio:.2f}x the output tokens/s", flush=True)
    names = ("requests", "prompt_tokens", "new_tokens", "slots", "short_len", "rounds", "seed")
    settings = {k: getattr(args, k) for k in names}
    return {
        "machine": machine(),
        "model": model,
        "settings": {**settings, "max_len": long_len},
        "sides": sides,
        "throughput_ratio": ratio,
    }


def plot_context(report: dict, path) -> None:
    names = list(report["sides"])
    fig, axes = pyplot().subplots(1, 2, figsize=(8, 3.4))
    axes[0].bar(names, [report["sides"][n]["output_tokens_per_s"] for n in names])
    axes[0].set(ylabel="output tokens/s")
    axes[1].bar(names, [report["sides"][n]["tpot_s"]["p50"] * 1e3 for n in names])
    axes[1].set(ylabel="time per output token p50 (ms)")
    s = report["settings"]
    fig.suptitle(
        f"{report['model']}: {s['requests']} requests at once, prompts {s['prompt_tokens'][0]}-{s['prompt_tokens'][1]}"
        f" tokens, {s['new_tokens']} new tokens, {s['slots']} slots",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path)


def parser():
    from gpt_jax.bench.corpus import add_corpus_flag
    from gpt_jax.util.argparsing import OneLineParser, positive_int

    p = OneLineParser(prog="gpt-jax bench-serve --workload context", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=["context"], default="context")
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument(
        "--random-llama", type=positive_int, default=None, metavar="CONTEXT",
        help="a random Llama-shaped model instead (4 layers, width 256, 2 kv heads) of CONTEXT positions",
    )  # fmt: skip
    p.add_argument("--requests", type=positive_int, default=8, help="requests, all arriving at once")
    p.add_argument("--prompt-tokens", default="16,64", help="prompt lengths, uniform in [low, high]")
    p.add_argument("--new-tokens", type=positive_int, default=128)
    p.add_argument("--slots", type=positive_int, default=8)
    p.add_argument("--max-len", type=positive_int, default=None, help="the long side (default: the model's context)")
    p.add_argument("--short-len", type=positive_int, default=512, help="the short side's positions per slot")
    p.add_argument("--rounds", type=positive_int, default=5, help="measured rounds per side (the median is kept)")
    p.add_argument("--seed", type=int, default=0)
    add_corpus_flag(p)
    p.add_argument("--json", default="benchmarks/results/serve_context.json", help="where to write the results")
    p.add_argument("--plot", default="docs/serve_context.png", help="where to write the plot ('' for none)")
    return p


def main(argv: list[str]) -> int:
    import json

    from gpt_jax.bench.corpus import corpus_file

    args = parser().parse_args(argv)
    try:
        args.prompt_tokens = tuple(int(x) for x in args.prompt_tokens.split(","))
        low, high = args.prompt_tokens
    except ValueError:
        raise InputError("--prompt-tokens takes two integers like 16,64") from None
    if not (1 <= low <= high and 0 <= args.seed < 2**31):
        raise InputError("--prompt-tokens needs 1 <= low <= high, --seed an integer in [0, 2**31)")
    check_report_paths(args)
    args.corpus = corpus_file(args.corpus)
    gen, model = load_model(args)
    long_len = args.max_len or gen.config.max_seq_len
    if not high + args.new_tokens <= args.short_len <= long_len <= gen.config.max_seq_len:
        raise InputError(
            f"needs prompt + new tokens ({high} + {args.new_tokens}) <= --short-len ({args.short_len}) <= --max-len "
            f"({long_len}) <= the model's context ({gen.config.max_seq_len})"
        )
    report = run_context(gen, args, model)
    write_text_atomically(args.json, json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot_context(report, args.plot)
    print(f"wrote {args.json}" + (f" and {args.plot}" if args.plot else ""))
    return 0
