"""`gpt-jax`: generate, chat, score, train, serve, bench and bench-serve from the command line.

Bad input prints one line `gpt-jax: error: ...` and exits with status 2; a failure of the environment (disk full,
permission denied) one line and status 1; never a traceback. A reader that closes the pipe ends the program quietly.
The generate flags and their defaults come from `settings.GenerationSettings`, so they are the Python API's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path

from gpt_jax.decoding.settings import GenerationSettings, repeat_rows
from gpt_jax.cli.parser import build_parser
from gpt_jax.errors import GptJaxError, InputError
from gpt_jax.text.detokenize import IncrementalDecoder
from gpt_jax.text.tokenizer import check_text
from gpt_jax.training.config import TrainConfig
from gpt_jax.training.corpus import read_text
from gpt_jax.util.argparsing import one_line
from gpt_jax.util.compile_cache import enable_compile_cache
from gpt_jax.util.json_files import read_json_object

EXIT_INPUT, EXIT_ENVIRONMENT, EXIT_PIPE_CLOSED, EXIT_INTERRUPTED = 2, 1, 141, 130


def _mesh(text: str | None):
    if not text:
        return None
    from gpt_jax.parallel.sharding import parse_mesh

    return parse_mesh(text)


def _constraint(args) -> dict:
    """--regex / --choice / --json-schema FILE / --json-object as generate's settings."""
    if args.json_schema is not None:
        path, label = Path(args.json_schema), f"--json-schema {args.json_schema}"
        if not path.is_file():
            raise InputError(f"{label}: no such file")
        return {"json_schema": read_json_object(path, InputError, label)}
    given = {"regex": args.regex, "choice": args.choice, "json_object": args.json_object}
    return {name: value for name, value in given.items() if value is not None}


def _generate(args) -> int:
    import gpt_jax

    names = [f.name for f in dataclasses.fields(GenerationSettings) if f.metadata["cli"]]
    settings = {name: getattr(args, name) for name in names if name in args.given}
    for prompt in args.prompts:
        check_text(prompt, "PROMPT")
    if args.prompt_lookup and args.draft:
        raise InputError("--prompt-lookup and --draft are two ways to speculate: give one")
    settings.update(_constraint(args))
    if args.prompt_lookup:
        settings["speculative"] = gpt_jax.PromptLookup(num_tokens=args.prompt_lookup)
    if args.draft:
        draft = gpt_jax.load(args.draft).with_arithmetic(args.arithmetic)
        settings["speculative"] = gpt_jax.DraftModel(draft, num_tokens=args.draft_tokens)
    if args.distributed:
        from gpt_jax import distributed

        distributed.initialize()
        gen = gpt_jax.load(args.model, mesh=distributed.local_mesh()).with_arithmetic(args.arithmetic)
        out = distributed.generate(gen, args.prompts, **settings)
        if out is not None:
            _print_texts(args.prompts, out, args.json)
        return 0
    gen = _model(args)
    if args.stream:
        if args.n != 1:
            raise InputError("--stream prints one sample per prompt: use --n 1")
        seed = GenerationSettings.of(settings, gen.defaults).with_seed().seed
        streams = [gen.stream(p, **{**settings, "seed": seed, "row_seeds": [i]}) for i, p in enumerate(args.prompts)]
        if args.seed is None:  # once every prompt and setting is known to be good
            print(f"seed: {seed}", file=sys.stderr)
        for i, (prompt, pieces) in enumerate(zip(args.prompts, streams)):
            print(("\n" + "-" * 40 + "\n" if i else "") + prompt, end="", flush=True)
            for piece in pieces:
                print(piece, end="", flush=True)
            print()
        return 0
    result = gen.generate(args.prompts, **settings)
    if args.seed is None:
        print(f"seed: {result.seed}", file=sys.stderr)
    _print_texts(repeat_rows(args.prompts, args.n), result, args.json)
    return 0


def _chat(args) -> int:
    """Read user turns from stdin, stream each reply, keep the history; /reset clears it, /exit (or EOF) ends."""
    import gpt_jax

    gen = gpt_jax.load(args.model).with_arithmetic(args.arithmetic)
    tok = gen.tokenizer
    if tok is None or tok.chat_template is None:
        raise InputError(f"{args.model or 'the bundled model'} has no chat template; use gpt-jax generate")
    names = [
        f.name for f in dataclasses.fields(GenerationSettings) if f.metadata["cli"] and f.name not in ("n", "stop")
    ]
    given = {name: getattr(args, name) for name in names if name in args.given}
    settings = GenerationSettings.of(given, gen.defaults).with_seed()
    gen.prepare([[tok.bos_id if tok.bos_id >= 0 else 0]], settings)  # every value checked before the first turn
    if args.seed is None:
        print(f"seed: {settings.seed}", file=sys.stderr)
    start = [{"role": "system", "content": check_text(args.system, "--system")}] if args.system else []
    history = list(start)
    for line in sys.stdin:
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history = list(start)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": check_text(text, "message")})
        ids = tok.apply_chat_template(history)
        decoder, reply = IncrementalDecoder(tok, ids), ""
        for token in gen.stream_ids(ids, **{name: getattr(settings, name) for name in names}):
            piece = decoder.add([token])
            reply += piece
            print(piece, end="", flush=True)
        tail = decoder.flush()
        print(tail, flush=True)
        history.append({"role": "assistant", "content": reply + tail})
    return 0


def _serve(args) -> int:
    serve = _serve_extra("serve", "gpt_jax.serving.run").serve
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {args.port}")
    gen = _model(args)
    options = {"slots": args.slots, "max_queue": args.max_queue, **_engine_options(args)}
    serve(gen, _model_name(args), args.host, args.port, steps_per_dispatch=args.steps_per_dispatch, **options)
    return 0


def _batch(args) -> int:
    _serve_extra("batch", "gpt_jax.serving.server", "httpx")  # what run_batch imports when it starts the engine
    from gpt_jax.jobs.batch_file import run_batch

    options = {"slots": args.slots, **_engine_options(args)}
    progress = run_batch(_model(args), args.input, args.output, _model_name(args), args.concurrency, **options)
    print(progress.summary(), file=sys.stderr)
    return 0


def _engine_options(args) -> dict:
    options = {"max_len": args.max_len, "chunk": args.chunk, "prefix_cache_gb": args.prefix_cache_gb}
    return {**options, "constraint_states": args.constraint_states, "prefill_together": args.prefill_together}


def _serve_extra(command: str, *modules: str):
    """The serve extra's `modules` imported (the last returned), or an InputError saying how to install it."""
    try:
        return [importlib.import_module(m) for m in modules][-1]
    except ImportError as e:
        raise InputError(
            f"gpt-jax {command} needs the serve extra ({e.name} is missing): pip install 'gpt-jax[serve]'"
        ) from None


def _model(args):
    """--model loaded on --mesh with --arithmetic."""
    import gpt_jax

    return gpt_jax.load(args.model, mesh=_mesh(args.mesh)).with_arithmetic(args.arithmetic)


def _model_name(args) -> str:
    """The model's name in request bodies: --served-model-name, else the model directory's name."""
    return args.served_model_name or (Path(args.model).resolve().name if args.model else "shakespeare")


def _print_texts(prompts, result, as_json: bool) -> None:
    for i, (prompt, text) in enumerate(zip(prompts, result.texts)):
        if as_json:
            row = {"prompt": prompt, "text": text, "finish_reason": result.finish_reasons[i]}
            print(json.dumps({**row, "token_ids": result.token_ids[i], "seed": result.seed}))
        else:
            print(("\n" + "-" * 40 + "\n" if i else "") + prompt + text)


SMALL_PRESET_VOCAB = 512  # what `train` gives a preset whose vocabulary cannot hold SentencePiece's byte pieces


def _train(args) -> int:
    from gpt_jax.model.config import ModelConfig
    from gpt_jax.model.presets import PRESETS
    from gpt_jax.text.sentencepiece_training import MIN_VOCAB_SIZE
    from gpt_jax.training.trainer import train
    from gpt_jax.training.corpus import unigram_baseline

    if args.preset not in PRESETS:
        raise InputError(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    config, given = PRESETS[args.preset], {}
    if args.config:
        given = read_json(Path(args.config), "--config")
        config = ModelConfig.from_dict(given, source=args.config, base=config)
    if args.vocab_size is not None:
        config = config.replace(vocab_size=args.vocab_size)
    note = None
    from_preset = args.vocab_size is None and "vocab_size" not in given
    if from_preset and config.vocab_size < MIN_VOCAB_SIZE:  # the tiny presets: too few pieces for the bytes
        note = f"vocab_size {SMALL_PRESET_VOCAB}: the preset's {config.vocab_size} cannot hold the 256 byte pieces"
        config = config.replace(vocab_size=SMALL_PRESET_VOCAB)
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    trainer = train(args.files, args.out, config, tc, resume=args.resume, mesh=_mesh(args.mesh))
    final = trainer.history[-1] if trainer.history else trainer.evaluate()
    final["unigram_val_nats_per_token"] = unigram_baseline(trainer.corpus, trainer.config.vocab_size)
    final["params"] = trainer.config.num_params
    final["vocab_size"] = trainer.config.vocab_size
    if note:
        final["note"] = note + " (set it with --vocab-size)"
    print()
    print(json.dumps(final, indent=1))
    return 0


def read_json(path: Path, what: str):
    """A JSON file given on the command line, or an InputError naming it."""
    check_regular_file(path, what)
    return read_json_object(path, InputError, f"{what} {path}")


def check_regular_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise InputError(f"{what} {path}: is a directory, not a file")
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} {path}: not a regular file")


def _score(args) -> int:
    import gpt_jax

    path = Path(args.file)
    check_regular_file(path, "FILE")
    gen = gpt_jax.load(args.model)
    text = read_text(path)
    if not text.strip():
        raise InputError(f"{path}: empty file")
    result = gen.score([text])
    nll, tokens = -sum(result.log_likelihood), sum(result.num_tokens)
    report = {"tokens": tokens, "characters": len(text), "nats_per_token": nll / tokens}
    print(json.dumps({**report, "nats_per_char": nll / len(text), "perplexity": result.perplexity}))
    return 0


def _run(argv: list[str]) -> int:
    if argv[:1] == ["bench"] and "--invariance" in argv:  # exact against fast arithmetic, per batch
        from gpt_jax.bench.invariance import main as invariance_main

        return invariance_main([a for a in argv[1:] if a != "--invariance"])
    if argv[:1] == ["bench"] and "--speculative" in argv:  # speculative decoding's own benchmark
        from gpt_jax.bench.speculative import main as bench_main

        return bench_main([a for a in argv[1:] if a != "--speculative"])
    if argv[:1] == ["bench"] and "--structured" in argv:  # what a constraint costs
        from gpt_jax.bench.structured import main as structured_main

        return structured_main([a for a in argv[1:] if a != "--structured"])
    if argv[:1] == ["bench-serve"]:
        from gpt_jax.bench.serving import main as bench_serve_main
        from gpt_jax.bench.serving_chat import main as bench_chat_main
        from gpt_jax.bench.serving_context import main as bench_context_main

        workload = argv[argv.index("--workload") + 1] if "--workload" in argv[1:-1] else "poisson"
        mains = {"chat": bench_chat_main, "context": bench_context_main}
        return mains.get(workload, bench_serve_main)(argv[1:])
    if argv[:1] == ["bench"]:  # the benchmark has its own argument parser
        from gpt_jax.bench.models import main as bench_main

        return bench_main(argv[1:])
    parser, subparsers = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, which knows its own flags
        subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("generate", "chat"):  # the settings the user gave; the checkpoint's own defaults fill the rest
        explicit = build_parser(defaults=argparse.SUPPRESS)[1][args.command]  # flags without defaults: only the given
        args.given = set(vars(explicit.parse_known_args(argv[1:])[0]))
    enable_compile_cache()  # a later run of the same shapes skips compilation (GPT_JAX_COMPILE_CACHE=off: never)
    commands = {
        "generate": _generate,
        "train": _train,
        "score": _score,
        "chat": _chat,
        "serve": _serve,
        "batch": _batch,
    }
    return commands[args.command](args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = _run(argv)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, inside the handlers below
        return code
    except GptJaxError as e:
        print(f"gpt-jax: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except OSError as e:
        _silence_stdout()
        where = f" ({e.filename})" if e.filename else ""
        print(f"gpt-jax: error: {one_line(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print("gpt-jax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of unwritable output stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
