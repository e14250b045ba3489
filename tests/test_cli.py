"""The command line: output, repeatability, and one-line errors with exit status 2."""

import json

import jax
import pytest

from gpt_jax import Generator
from gpt_jax.checkpoints import checkpoint
from gpt_jax.cli.main import main
from gpt_jax.model.presets import LLAMA_TINY
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def model_dir(small_tokenizer, tmp_path_factory):
    g = Generator.from_config(LLAMA_TINY.replace(vocab_size=320, pad_id=3), small_tokenizer, jax.random.key(4))
    return str(checkpoint.save(g, tmp_path_factory.mktemp("m") / "model"))


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_is_repeatable_with_a_seed(capsys, model_dir):
    args = ("generate", "ROMEO:", "JULIET:", "--model", model_dir, "--seed", "0", "--max-new-tokens", "8")
    code, first, _ = run(capsys, *args)
    assert code == 0 and first.startswith("ROMEO:") and "JULIET:" in first
    assert run(capsys, *args)[1] == first
    assert run(capsys, *args[:-4], "--seed", "1", "--max-new-tokens", "8")[1] != first


def test_arithmetic_flag_picks_the_generators_arithmetic(capsys, model_dir, monkeypatch):
    seen = []
    original = Generator.with_arithmetic
    monkeypatch.setattr(Generator, "with_arithmetic", lambda self, a: seen.append(a) or original(self, a))
    args = ("generate", "ROMEO:", "--model", model_dir, "--seed", "0", "--max-new-tokens", "4", "--json")
    code, out, _ = run(capsys, *args, "--arithmetic", "fast")
    assert code == 0 and json.loads(out.splitlines()[0])["prompt"] == "ROMEO:" and seen == ["fast"]
    code, _, err = run_cli(capsys, [*args, "--arithmetic", "fastest"])
    assert code == 2 and "invalid choice: 'fastest' (choose from 'exact', 'fast')" in err


def test_generate_prints_the_fresh_seed(capsys, model_dir):
    code, out, err = run(capsys, "generate", "A", "--model", model_dir, "--max-new-tokens", "2")
    assert code == 0 and err.startswith("seed: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "x", "--top-p", "1.5"], "top_p must be float in (0.0, 1.0], got 1.5"),
        (["generate", "x", "--temperature", "-1"], "temperature must be float in [0.0, 1000000.0], got -1.0"),
        (["generate", "x", "--top-k", "-2"], "top_k must be int in [0, 320], got -2"),
        (["generate", "x", "--min-p", "2"], "min_p must be float in [0.0, 1.0], got 2.0"),
        (["generate", "x", "--max-new-tokens", "0"], "max_new_tokens must be int in [1, 128], got 0"),
        (["generate", "x", "--max-new-tokens", "500"], "max_new_tokens must be int in [1, 128], got 500"),
        (["generate", "x", "--seed", "-3"], "seed must be an integer in [0, 2**32), got -3"),
        (["generate", "x", "--top-k", "abc"], "argument --top-k: invalid int value: 'abc'"),
        (["generate"], "the following arguments are required: PROMPT"),
        (["generate", "x", "--model", "/nonexistent"], "/nonexistent: not a directory"),
        (["score", "/nonexistent.txt"], "file not found: /nonexistent.txt"),
        (["train", "/nonexistent.txt", "--out", "/tmp/x"], "text file not found: /nonexistent.txt"),
        (["train", "/nonexistent.txt", "--out", "/tmp/x", "--preset", "huge"], "--preset must be one of"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["generate", "x", "--repetition-penalty", "0"], "repetition_penalty must be float in (0.0, 100.0]"),
        (["generate", "x", "--presence-penalty", "9"], "presence_penalty must be float in [-2.0, 2.0]"),
        (["generate", "x", "--frequency-penalty", "-3"], "frequency_penalty must be float in [-2.0, 2.0]"),
        (["generate", "x", "--min-new-tokens", "-1"], "min_new_tokens must be int in [0, 128]"),
        (["generate", "x", "--n", "0"], "n must be an integer in [1, 64]"),
        (["generate", "x", "--stop", ""], "stop must be a non-empty string"),
        (["generate", "x", "--stream", "--n", "2"], "--stream prints one sample per prompt"),
        (["generate", "x", "--mesh", "rows=2"], "--mesh must look like data=2,model=4"),
        (["generate", "x", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, model_dir, argv, message):
    if argv[0] in ("generate", "score") and "--model" not in argv:
        argv = argv + ["--model", model_dir]
    code, _, err = run_cli(capsys, argv)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_stop_and_n(capsys, model_dir):
    code, out, _ = run(
        capsys,
        "generate",
        "A",
        "--model",
        model_dir,
        "--seed",
        "1",
        "--n",
        "2",
        "--json",
        "--max-new-tokens",
        "6",
        "--stop",
        "zz",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2 and rows[0]["text"] != rows[1]["text"]


def test_score_rejects_binary_and_empty_files(capsys, model_dir, tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    (tmp_path / "empty.txt").write_text("  \n")
    for name, message in (("bin.txt", "not UTF-8 text"), ("empty.txt", "empty file")):
        code, _, err = run(capsys, "score", str(tmp_path / name), "--model", model_dir)
        assert code == 2 and message in err and err.count("\n") == 1


def test_score_prints_perplexity(capsys, model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    code, out, _ = run(capsys, "score", str(text), "--model", model_dir)
    assert code == 0 and '"perplexity"' in out


def test_stream_prints_what_generate_prints(capsys, model_dir):
    base = ("generate", "ROMEO:", "JULIET:", "--model", model_dir, "--seed", "5", "--max-new-tokens", "10")
    code, plain, _ = run(capsys, *base)
    code2, streamed, _ = run(capsys, *base, "--stream")
    assert code == code2 == 0 and streamed == plain


def test_compile_cache_directory_from_the_environment(tmp_path, monkeypatch):
    from gpt_jax.util import compile_cache

    monkeypatch.setattr(compile_cache.jax.config, "update", lambda *a: None)  # keep this process's settings
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.enable_compile_cache() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.enable_compile_cache() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert compile_cache.enable_compile_cache() == tmp_path / "x" / "gpt_jax" / "xla"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert compile_cache.enable_compile_cache(blocker / "sub") is None  # cannot be created: warn, carry on
