"""The command line under hostile input and a hostile environment: one line on stderr, status 2 for bad input and
1 for the environment, never a traceback; a reader that closes the pipe ends the program quietly."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import gpt_jax
from gpt_jax import GenerationSettings, Generator
from gpt_jax.checkpoints import checkpoint
from gpt_jax.cli.main import main
from gpt_jax.cli.parser import build_parser
from gpt_jax.model.presets import LLAMA_TINY
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(small_tokenizer, tmp_path_factory):
    g = Generator.from_config(LLAMA_TINY.replace(vocab_size=320, pad_id=3), small_tokenizer, jax.random.key(4))
    return str(checkpoint.save(g, tmp_path_factory.mktemp("m") / "model"))


@pytest.fixture()
def files(tmp_path, corpus_slice):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (tmp_path / "config.json").write_bytes(b'{"d_model": "\xff"}')
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "a_dir").mkdir()
    return {"corpus": str(corpus_slice), "tmp": str(tmp_path)}


TRAIN = [
    "train",
    "{corpus}",
    "--out",
    "{tmp}/run",
    "--steps",
    "2",
    "--warmup-steps",
    "0",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
]
CASES = [  # (argv, exit status, part of the one line on stderr)
    (["frobnicate"], 2, "(see gpt-jax --help)"),
    (["generate", "x", "--max-tokens", "5"], 2, "unrecognized arguments: --max-tokens 5 (see gpt-jax generate --help)"),
    (["generate", "x", "--seed", "-1"], 2, "seed must be an integer in [0, 2**32), got -1"),
    (["generate", "x", "--seed", str(2**64)], 2, "seed must be an integer in [0, 2**32)"),
    (["generate", "caf\udce9"], 2, "not valid Unicode text"),
    (["generate", "x", "--stop", "\udcff"], 2, "not valid Unicode text"),
    (["generate", "x", *[f"--stop=s{i}" for i in range(17)]], 2, "stop takes at most 16 strings, got 17"),
    (["generate", "x", "--min-new-tokens", "9", "--max-new-tokens", "4"], 2, "min_new_tokens=9 is more than"),
    (["generate", "x", "--distributed"], 2, "--distributed needs a cluster"),
    (["score", "{tmp}/a_dir"], 2, "is a directory, not a file"),
    (["score", "/dev/null"], 2, "not a regular file"),
    (["bench", "--batches", "0"], 2, "must be an integer >= 1, got 0 (see gpt-jax bench --help)"),
    (["bench", "--shapes", "huge"], 2, "invalid choice: 'huge'"),
    (["bench", "--invariance", "--out", "a\x00b"], 2, "a path may not hold a NUL character"),
    (["bench", "--structured", "--output", "{tmp}/a_file"], 2, "exists and is not a result file"),
    (["bench", "--structured", "--json-schema"], 2, "unrecognized arguments"),
    (["train", "{tmp}/latin1.txt", "--out", "{tmp}/run"], 2, "not UTF-8 text"),
    (TRAIN + ["--config", "{tmp}/config.json"], 2, "not UTF-8 text"),
    (TRAIN[:3] + ["{tmp}/a_file"], 2, "exists and is not a checkpoint directory"),
    (TRAIN[:3] + ["{tmp}"], 2, "holding files that are not a checkpoint's"),
    (TRAIN + ["--vocab-size", "0"], 2, "vocab_size must be an integer >= 1, got 0"),
    (TRAIN + ["--learning-rate", "inf"], 2, "learning_rate must be a finite number"),
    (TRAIN + ["--grad-clip", "nan"], 2, "grad_clip must be a finite number"),
    (TRAIN + ["--weight-decay", "nan"], 2, "weight_decay must be a finite number"),
    (TRAIN + ["--min-lr-ratio", "-5"], 2, "min_lr_ratio must be a finite number in [0.0, 1.0]"),
    (TRAIN[:-1] + ["100000"], 2, "seq_len=100000 is more than the model's context"),
    (TRAIN + ["--seed", str(2**64)], 2, "seed must be an integer in [0, 2**32), got 18446744073709551616"),
    (TRAIN + ["--val-every", "1"], 2, "val_every must be >= 2"),
    (TRAIN + ["--resume"], 2, "no checkpoint to resume from"),
    (["train", "{corpus}", "--out", "/proc/gpt-jax-test/run"], 1, "/proc/gpt-jax-test"),
]


@pytest.mark.parametrize("argv, status, message", CASES, ids=lambda x: " ".join(x)[:50] if isinstance(x, list) else "")
def test_failures_are_one_line(capsys, model_dir, files, argv, status, message):
    argv = [a.format(**files) for a in argv]
    if argv[0] in ("generate", "score") and "--model" not in argv:
        argv = argv + ["--model", model_dir]
    code, _, err = run_cli(capsys, argv)
    assert code == status, err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("gpt-jax: error: ") and "Traceback" not in err
    assert Path(files["tmp"], "a_file").read_text() == "mine"


def test_resume_from_a_damaged_checkpoint(capsys, model_dir, files):
    run = Path(files["tmp"]) / "run"
    checkpoint.save(gpt_jax.load(model_dir), run)  # a model directory, but no training state
    argv = [a.format(**files) for a in TRAIN] + ["--resume"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "not a training checkpoint to resume" in err and err.count("\n") == 1


def cli(*args, stdout=subprocess.PIPE, shell_tail=""):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPT_JAX_COMPILE_CACHE": "off"}
    command = [sys.executable, "-m", "gpt_jax.cli.main", *args]
    if shell_tail:
        line = " ".join(f"'{a}'" for a in command) + shell_tail
        return subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, timeout=300)
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly_and_a_full_disk_is_one_line(model_dir):
    piped = cli("generate", "ROMEO:", "--model", model_dir, "--stream", "--seed", "0", shell_tail=" | head -c 1")
    assert piped.returncode == 0 and len(piped.stdout) == 1 and piped.stderr == ""  # head's status; ours is quiet
    piped = cli(
        "generate", "ROMEO:", "--model", model_dir, "--seed", "0", shell_tail=" | head -c 1; echo ${PIPESTATUS[0]} >&2"
    )
    assert piped.stderr.strip() in ("0", "141"), piped.stderr
    with open("/dev/full", "w") as full:
        out = cli("generate", "ROMEO:", "--model", model_dir, "--seed", "0", stdout=full)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "No space left on device" in out.stderr


def test_the_command_line_and_the_api_read_the_same_defaults():
    parser, subparsers = build_parser()
    args = subparsers["generate"].parse_args(["x"])
    for f in dataclasses.fields(GenerationSettings):
        if f.metadata["cli"]:
            assert getattr(args, f.name) == f.default, f.name
    # and a changed default changes the flag: the flags are built from the fields themselves
    fields = {f.name: f for f in dataclasses.fields(GenerationSettings)}
    assert fields["top_p"].default == 0.95 and "--top-p" in subparsers["generate"].format_help()
