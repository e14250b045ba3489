"""Shared fixtures: tiny configs, a real-world Mistral tokenizer (tests/data), and a tokenizer trained here."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ["GPT_JAX_COMPILE_CACHE"] = "off"  # the command line's compile cache stays out of the home directory

SHARED_XLA_CACHE = "GPT_JAX_TEST_XLA_CACHE"  # one run's compiled programs, shared by its xdist workers

from gpt_jax.model.presets import GPT2_TINY, LLAMA_TINY
from gpt_jax.text.sentencepiece_training import train_tokenizer
from gpt_jax.text.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "shakespeare.txt"
MISTRAL_MODEL = ROOT / "tests" / "data" / "mistral_v1_tokenizer.model"

TINY_CONFIGS = {"gpt2": GPT2_TINY, "llama": LLAMA_TINY}


def pytest_configure(config):
    """One persistent XLA cache per test run, in a fresh temporary directory that the run's workers share: many
    tests build a generator of the same model and shapes, whose programs each run would otherwise compile again
    in every test. It starts empty, so every program is still compiled once per run; it is removed at the end."""
    import jax

    if not hasattr(config, "workerinput") and SHARED_XLA_CACHE not in os.environ:
        os.environ[SHARED_XLA_CACHE] = tempfile.mkdtemp(prefix="gpt_jax_test_xla_")
        config._gpt_jax_xla_cache = os.environ[SHARED_XLA_CACHE]  # the process that made it removes it
    jax.config.update("jax_compilation_cache_dir", os.environ[SHARED_XLA_CACHE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def shared_cache_env() -> dict:
    """The environment for a child process that should use this run's XLA cache too (its stderr may then carry
    JAX's warning about an entry another process was writing, so not for children whose stderr is checked)."""
    cache = os.environ[SHARED_XLA_CACHE]
    return {**os.environ, "GPT_JAX_COMPILE_CACHE": cache, "JAX_COMPILATION_CACHE_DIR": cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1"}


def pytest_unconfigure(config):
    made = getattr(config, "_gpt_jax_xla_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop(SHARED_XLA_CACHE, None)


@pytest.fixture(scope="session")
def mistral_tokenizer() -> Tokenizer:
    if not MISTRAL_MODEL.is_file():
        pytest.fail(f"{MISTRAL_MODEL} is missing")
    return Tokenizer(MISTRAL_MODEL)


@pytest.fixture(scope="session")
def corpus_slice(tmp_path_factory) -> Path:
    """The first 200 kB of the Shakespeare corpus, plus a line of Chinese and emoji."""
    path = tmp_path_factory.mktemp("corpus") / "slice.txt"
    text = CORPUS.read_text(encoding="utf-8")[:200_000]
    path.write_text(text + "\n繁體中文測試 😀🎉 café\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_tokenizer(corpus_slice) -> Tokenizer:
    """A 320-piece BPE model trained on the corpus slice (most non-ASCII characters fall back to bytes)."""
    return Tokenizer(train_tokenizer([corpus_slice], 320, "bpe"))


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """`gpt-jax ARGV` in this process: (exit status, stdout, stderr); argparse's own exits count as statuses."""
    from gpt_jax.cli.main import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def chi_square_threshold(dof: int, z: float = 4.753) -> float:
    """Upper quantile of chi-square(dof) by the Wilson-Hilferty approximation; z=4.753 is a 1e-6 tail."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def assert_matches_distribution(samples: np.ndarray, probs: np.ndarray) -> None:
    """Chi-square goodness of fit (false-failure rate about 1e-6); tokens with probability 0 must never appear."""
    n = len(samples)
    counts = np.bincount(samples, minlength=len(probs))
    impossible = probs <= 0
    assert counts[impossible].sum() == 0, f"drew tokens of probability 0: {np.nonzero(counts * impossible)[0]}"
    keep = ~impossible
    expected = probs[keep] * n
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    dof = int(keep.sum()) - 1
    if dof >= 1:
        assert stat < chi_square_threshold(dof), f"chi-square {stat:.1f} over {dof} dof"


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def served_gen():
    """The bundled model with a small chat template, for the server's tests."""
    import gpt_jax
    from gpt_jax.text.chat import ChatTemplate

    g = gpt_jax.load()
    g.tokenizer.chat_template = ChatTemplate(CHAT_TEMPLATE)
    return g


@pytest.fixture(scope="module")
def server(served_gen):
    """`served_gen` behind a real server on 127.0.0.1 (8 slots, a queue of 64) for one test module."""
    from tests.serving import RunningServer

    running = RunningServer(served_gen, "shakespeare", slots=8, max_queue=64)
    yield running
    running.stop()
