"""`gpt-jax`: generate, train and score from the command line.

Bad input prints one line `gpt-jax: error: ...` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
from pathlib import Path

from gpt_jax.compile_cache import enable_compile_cache
from gpt_jax.errors import GptJaxError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, instead of usage text
        self.exit(2, f"gpt-jax: error: {message} (see gpt-jax {self.prog.split()[-1]} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpt-jax", description="Text generation with a pure JAX/Flax GPT.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="continue one or more prompts")
    g.add_argument("prompts", nargs="+", metavar="PROMPT")
    g.add_argument("--model", default=None, help="model directory (default: the bundled Shakespeare model)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 means off")
    g.add_argument("--top-p", type=float, default=0.95, help="1 means off")
    g.add_argument("--min-p", type=float, default=0.0, help="0 means off")
    g.add_argument("--seed", type=int, default=None, help="default: a fresh seed, printed to stderr")
    g.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    g.add_argument("--stop", action="append", default=None, help="a stop string (repeat for several)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 means off")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="0 means off")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="0 means off")
    g.add_argument("--min-new-tokens", type=int, default=0)
    g.add_argument("--n", type=int, default=1, help="samples per prompt")
    g.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: start jax.distributed, share the prompts out, print on host 0",
    )
    g.add_argument("--mesh", default=None, help="shard over devices, e.g. data=2,model=4 (default: one device)")
    g.add_argument("--stream", action="store_true", help="print the text as it is generated (one prompt at a time)")

    t = sub.add_parser("train", help="train a tokenizer and a model on text files")
    t.add_argument("files", nargs="+", metavar="TEXT_FILE")
    t.add_argument("--out", required=True, help="checkpoint directory (written atomically, resumable)")
    t.add_argument("--preset", default="shakespeare", help="model config preset to start from")
    t.add_argument("--config", default=None, help="JSON file of ModelConfig fields overriding the preset")
    t.add_argument("--vocab-size", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--mesh", default=None, help="e.g. data=2,model=4 (default: every device on data)")
    from gpt_jax.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        t.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)

    sub.add_parser("bench", help="decode benchmark against transformers (see gpt-jax bench --help)")
    s = sub.add_parser("score", help="perplexity of the model on a text file")
    s.add_argument("file")
    s.add_argument("--model", default=None)
    return p


def _generate(args) -> int:
    import gpt_jax
    from gpt_jax.errors import InputError

    settings = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        ignore_eos=args.ignore_eos,
        stop=args.stop,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        min_new_tokens=args.min_new_tokens,
    )
    if args.distributed:
        from gpt_jax import distributed

        distributed.initialize()
        gen = gpt_jax.load(args.model, mesh=distributed.local_mesh())
        out = distributed.generate(gen, args.prompts, seed=args.seed, **settings)
        if out is not None:
            for i, (prompt, text) in enumerate(zip(args.prompts, out.texts)):
                print(("-" * 40 + "\n" if i else "") + prompt + text)
        return 0
    mesh = None
    if args.mesh:
        from gpt_jax.sharding import parse_mesh

        mesh = parse_mesh(args.mesh)
    gen = gpt_jax.load(args.model, mesh=mesh)
    if args.stream:
        if args.n != 1:
            raise InputError("--stream prints one sample per prompt: use --n 1")
        seed = args.seed if args.seed is not None else secrets.randbits(32)
        if args.seed is None:
            print(f"seed: {seed}", file=sys.stderr)
        for i, prompt in enumerate(args.prompts):
            print(("\n" + "-" * 40 + "\n" if i else "") + prompt, end="", flush=True)
            for piece in gen.stream(prompt, seed=seed, row_seeds=[i], **settings):
                print(piece, end="", flush=True)
            print()
        return 0
    result = gen.generate(args.prompts, seed=args.seed, n=args.n, **settings)
    prompts = [p for p in args.prompts for _ in range(args.n)]
    if args.seed is None:
        print(f"seed: {result.seed}", file=sys.stderr)
    for i, (prompt, text) in enumerate(zip(prompts, result.texts)):
        if args.json:
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "text": text,
                        "finish_reason": result.finish_reasons[i],
                        "token_ids": result.token_ids[i],
                        "seed": result.seed,
                    }
                )
            )
        else:
            if i:
                print("\n" + "-" * 40)
            print(prompt + text)
    return 0


def _train(args) -> int:
    from gpt_jax.config import PRESETS, ModelConfig
    from gpt_jax.errors import InputError
    from gpt_jax.train import TrainConfig, train, unigram_baseline

    if args.preset not in PRESETS:
        raise InputError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    config = PRESETS[args.preset]
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise InputError(f"--config file not found: {path}")
        try:
            overrides = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"--config {path}: not valid JSON: {e}") from None
        config = ModelConfig.from_dict(overrides, source=str(path), base=config)
    if args.vocab_size:
        config = config.replace(vocab_size=args.vocab_size)
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    mesh = None
    if args.mesh:
        from gpt_jax.sharding import parse_mesh

        mesh = parse_mesh(args.mesh)
    trainer = train(args.files, args.out, config, tc, resume=args.resume, mesh=mesh)
    final = trainer.history[-1] if trainer.history else trainer.evaluate()
    final["unigram_val_nats_per_token"] = unigram_baseline(trainer.corpus, config.vocab_size)
    final["params"] = config.num_params
    print()
    print(json.dumps(final, indent=1))
    return 0


def _score(args) -> int:
    import gpt_jax
    from gpt_jax.errors import InputError

    path = Path(args.file)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    gen = gpt_jax.load(args.model)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise InputError(f"{path}: empty file")
    result = gen.score([text])
    nll = -sum(result.log_likelihood)
    print(
        json.dumps(
            {
                "tokens": sum(result.num_tokens),
                "characters": len(text),
                "nats_per_token": nll / sum(result.num_tokens),
                "nats_per_char": nll / max(len(text), 1),
                "perplexity": result.perplexity,
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark has its own argument parser
        from gpt_jax.bench import main as bench_main

        return bench_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    enable_compile_cache()  # a later run of the same shapes skips compilation (GPT_JAX_COMPILE_CACHE=off: never)
    try:
        return {"generate": _generate, "train": _train, "score": _score}[args.command](args)
    except GptJaxError as e:
        print(f"gpt-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
