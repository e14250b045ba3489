"""The `gpt-jax` command line's parser: one subcommand each, the generate flags built from `GenerationSettings`
and the train flags from `TrainConfig`, so their defaults are the Python API's."""

from __future__ import annotations

import dataclasses

from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.model.row_invariant import ARITHMETICS
from gpt_jax.serving.constraint_pool import DEFAULT_STATES
from gpt_jax.serving.options import PREFILL_TOGETHER
from gpt_jax.serving.prefix_cache import DEFAULT_BUDGET_GB
from gpt_jax.training.config import TrainConfig
from gpt_jax.util.argparsing import OneLineParser, non_negative_float, non_negative_int, positive_int


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser, cls, only=lambda field: True, default=dataclasses.MISSING) -> None:
    """One flag per field of `cls`, with the field's own default (or `default` for all) and its help, if any."""
    for f in dataclasses.fields(cls):
        if not only(f):
            continue
        help_text = f.metadata.get("help")
        kind = f.metadata.get("kind") or type(f.default)
        value = f.default if default is dataclasses.MISSING else default
        if f.default is False:
            parser.add_argument(flag(f.name), action="store_true", default=value, help=help_text)
        elif f.name == "stop":
            parser.add_argument(flag(f.name), action="append", default=value, help=help_text)
        else:
            parser.add_argument(flag(f.name), type=int if f.default is None else kind, default=value, help=help_text)


def add_prefill_flags(parser) -> None:
    """--chunk and the prefix cache's flags, which `serve` and `batch` share."""
    parser.add_argument(
        "--chunk",
        type=positive_int,
        default=None,
        help="prompt tokens per prefill pass, prefilled between decode steps, and the prefix cache's block (a "
        "power of two >= 16; default: a quarter of --max-len, 16 to 256)",
    )
    parser.add_argument(
        "--prefix-cache-gb",
        type=non_negative_float,
        default=DEFAULT_BUDGET_GB,
        help="memory for the keys and values of prompt blocks kept for prompts that start alike (default: "
        f"{DEFAULT_BUDGET_GB:g}; 0: off)",
    )
    parser.add_argument(
        "--no-prefix-cache", action="store_const", const=0.0, dest="prefix_cache_gb", help="no prefix cache"
    )
    parser.add_argument(
        "--prefill-together",
        type=positive_int,
        default=PREFILL_TOGETHER,
        help="the most short prompts (one chunk each, of one length bucket) prefilled in one pass, where that "
        f"keeps each one's numbers: the CPU kernel, float32, a dense MLP (default: {PREFILL_TOGETHER}; 1: one by one)",
    )
    parser.add_argument(
        "--constraint-states",
        type=non_negative_int,
        default=DEFAULT_STATES,
        help="room for the automata of constrained requests (response_format, structured_outputs), in states "
        f"(default: {DEFAULT_STATES}; 0: constrained requests are refused)",
    )


def add_arithmetic_flag(parser) -> None:
    parser.add_argument(
        "--arithmetic",
        choices=ARITHMETICS,
        default="exact",
        help="exact: a row's tokens never depend on its batch-mates, the batch size or speculation; fast: XLA's "
        "own arithmetic (no such promise; on CPU about as fast as exact, whose products use gpt_jax's own kernel)",
    )


def build_parser(defaults=dataclasses.MISSING) -> tuple[OneLineParser, dict]:
    """The parser and its subcommand parsers; `defaults` replaces every generation flag's default."""
    p = OneLineParser(prog="gpt-jax", description="Text generation with a pure JAX/Flax GPT.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    g = sub.add_parser(
        "generate",
        help="continue one or more prompts",
        description="Sampling settings not given here take the model directory's own (its generation_config.json), "
        "where it has them, else the defaults shown.",
    )
    g.add_argument("prompts", nargs="+", metavar="PROMPT")
    g.add_argument("--model", default=None, help="model directory (default: the bundled Shakespeare model)")
    add_dataclass_flags(g, GenerationSettings, lambda f: f.metadata["cli"], defaults)
    g.add_argument("--json", action="store_true", help="print one JSON object per sample")
    g.add_argument("--distributed", action="store_true", help="multi-host: jax.distributed, results on host 0")
    g.add_argument("--mesh", default=None, help="shard over devices, e.g. data=2,model=4 (default: one device)")
    add_arithmetic_flag(g)
    g.add_argument("--stream", action="store_true", help="print the text as it is generated (one prompt at a time)")
    g.add_argument(
        "--prompt-lookup", type=positive_int, default=None, metavar="K", help="speculate K tokens by prompt lookup"
    )
    g.add_argument("--draft", default=None, metavar="DIR", help="speculate with this draft model (same tokenizer)")
    g.add_argument("--draft-tokens", type=positive_int, default=4, metavar="K", help="tokens the draft proposes")
    shape = g.add_mutually_exclusive_group()
    shape.add_argument("--regex", default=None, metavar="RE", help="the generated text fully matches RE")
    shape.add_argument("--choice", nargs="+", default=None, metavar="TEXT", help="the text is one of these strings")
    shape.add_argument("--json-schema", default=None, metavar="FILE", help="the text is JSON valid under this schema")
    shape.add_argument("--json-object", action="store_true", default=None, help="the text is a JSON object")

    t = sub.add_parser("train", help="train a tokenizer and a model on text files")
    t.add_argument("files", nargs="+", metavar="TEXT_FILE")
    t.add_argument("--out", required=True, help="checkpoint directory (written atomically, resumable)")
    t.add_argument("--preset", default="shakespeare", help="model config preset to start from")
    t.add_argument("--config", default=None, help="JSON file of ModelConfig fields overriding the preset")
    t.add_argument("--vocab-size", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--mesh", default=None, help="e.g. data=2,model=4 (default: every device on data)")
    add_dataclass_flags(t, TrainConfig)

    about = "decode benchmark against transformers (gpt-jax bench --help); --speculative, --invariance, --structured"
    sub.add_parser("bench", help=about + ": their own", add_help=False)
    sub.add_parser(
        "bench-serve", help="the server against static batching (see gpt-jax bench-serve --help)", add_help=False
    )
    s = sub.add_parser("score", help="perplexity of the model on a text file")
    s.add_argument("file")
    s.add_argument("--model", default=None)
    c = sub.add_parser("chat", help="talk with an instruct model through its chat template (/reset, /exit)")
    c.add_argument("--model", default=None, help="model directory with a chat template")
    c.add_argument("--system", default=None, help="a system message that starts the conversation")
    add_dataclass_flags(c, GenerationSettings, lambda f: f.metadata["cli"] and f.name not in ("n", "stop"), defaults)
    add_arithmetic_flag(c)
    v = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching (extra: serve)")
    v.add_argument("--model", default=None, help="model directory (default: the bundled Shakespeare model)")
    v.add_argument("--served-model-name", default=None, help="the model's name in the API (default: directory name)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    v.add_argument("--slots", type=positive_int, default=8, help="sequences decoded together")
    v.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot; more get 429")
    v.add_argument("--max-len", type=positive_int, default=None, help="prompt + output tokens per slot")
    add_prefill_flags(v)
    v.add_argument("--steps-per-dispatch", type=positive_int, default=4, help="decode steps per device call")
    v.add_argument("--mesh", default=None, help="shard over devices, e.g. data=2,model=4 (default: one device)")
    add_arithmetic_flag(v)
    b = sub.add_parser(
        "batch",
        help="run a file of OpenAI Batch API requests (JSONL) through the server's engine, resumable (extra: serve)",
    )
    b.add_argument("input", metavar="INPUT", help="JSONL: {custom_id, method, url, body} a line")
    b.add_argument("--output", required=True, help="JSONL results; run again to resume what it lacks")
    b.add_argument("--model", default=None, help="model directory (default: the bundled Shakespeare model)")
    b.add_argument("--served-model-name", default=None, help="the model name bodies give (default: directory name)")
    b.add_argument("--slots", type=positive_int, default=8, help="sequences decoded together")
    b.add_argument("--concurrency", type=positive_int, default=None, help="requests in flight (default: 4 x slots)")
    b.add_argument("--max-len", type=positive_int, default=None, help="prompt + output tokens per slot")
    add_prefill_flags(b)
    b.add_argument("--mesh", default=None, help="shard over devices, e.g. data=2,model=4 (default: one device)")
    add_arithmetic_flag(b)
    return p, {"generate": g, "train": t, "score": s, "chat": c, "serve": v, "batch": b}
