"""The bundled default model: it loads with no path, generates repeatably, and beats a unigram baseline."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
from gpt_jax.checkpoints.checkpoint import DEFAULT_MODEL
from gpt_jax.model.transformer import forward
from gpt_jax.training.corpus import Corpus, unigram_baseline
from gpt_jax.training.config import TrainConfig
from gpt_jax.training.trainer import token_nll

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gen():
    return gpt_jax.load()


def test_bundled_directory_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL.iterdir()}
    assert set(files) == {"config.json", "model.safetensors", "tokenizer.model", "README.md"}
    assert sum(files.values()) < 25 * 2**20


def test_generates_repeatably(gen):
    a = gen.generate("JULIET:", seed=1, max_new_tokens=40)
    b = gen.generate("JULIET:", seed=1, max_new_tokens=40)
    assert a.texts == b.texts and len(a.texts[0]) > 20


def test_held_out_loss_beats_unigram(gen):
    """The held-out split of training (every 20th 4096-token block) scored now, against a unigram model."""
    card = json.loads((DEFAULT_MODEL / "README.md").read_text().split("```json")[1].split("```")[0])
    tc = TrainConfig(**card["train_config"])
    corpus = Corpus.from_text((ROOT / "data" / "shakespeare.txt").read_text(), gen.tokenizer, tc)
    windows = corpus.val_windows(gen.tokenizer, tc)
    nll = float(np.sum(jax.jit(lambda p, t: token_nll(gen.config, p, t))(gen.params, windows)))
    per_token = nll / (windows.shape[0] * (windows.shape[1] - 1))
    unigram = unigram_baseline(corpus, gen.config.vocab_size)
    assert per_token < unigram - 2.0, (per_token, unigram)
    assert abs(per_token - card["val_nats_per_token"]) < 0.01  # what the model card reports


@pytest.mark.parametrize("activations", [False, True], ids=["weight-only", "dynamic"])
def test_int8_tracks_the_trained_model(gen, activations):
    """Teacher-forced on 2048 held-out-style tokens: the same next-token argmax almost everywhere and the same
    nats/token; weight-only int8 also follows the fp32 greedy continuation of "ROMEO:" for at least 20 tokens."""
    q = gen.quantize_int8(activations=activations)
    text = (ROOT / "data" / "shakespeare.txt").read_text()[200_000:260_000]
    tokens = jnp.asarray(np.array(gen.tokenizer.encode(text)[: 8 * 256]).reshape(8, 256))
    ref, got = (np.asarray(forward(gen.config, p, tokens)) for p in (gen.params, q.params))

    def nll(logits):
        logprobs = np.asarray(jax.nn.log_softmax(logits[:, :-1], -1))
        return -np.take_along_axis(logprobs, np.asarray(tokens)[:, 1:, None], -1).mean()

    assert (ref.argmax(-1) == got.argmax(-1)).mean() > 0.97
    assert abs(nll(got) - nll(ref)) < 0.01
    if not activations:
        prompt = [gen.tokenizer.encode("ROMEO:")]
        a = gen.generate_ids(prompt, max_new_tokens=200, temperature=0.0, ignore_eos=True).token_ids[0]
        b = q.generate_ids(prompt, max_new_tokens=200, temperature=0.0, ignore_eos=True).token_ids[0]
        same_prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        assert same_prefix >= 20, same_prefix


@pytest.mark.slow
def test_wheel_ships_the_model(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("gpt_jax-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("config.json", "model.safetensors", "tokenizer.model"):
        assert f"gpt_jax/assets/shakespeare/{f}" in names


def _console_script() -> list[str]:
    """The installed `gpt-jax` entry point when the package is installed (as CI installs it), else the module."""
    script = Path(sys.executable).parent / "gpt-jax"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpt_jax.cli.main"]


@pytest.mark.slow
def test_command_line_out_of_the_box(tmp_path):
    """`gpt-jax generate "ROMEO:" --seed 0` twice identically, offline, from another directory; the first run fills
    the compile cache and the second runs from it."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    cache = tmp_path / "xla"
    env.update(HF_HUB_OFFLINE="1", NO_PROXY="*", PYTHONPATH=str(ROOT), GPT_JAX_COMPILE_CACHE=str(cache))
    runs = []
    for _ in range(2):
        runs.append(
            subprocess.run(
                [*_console_script(), "generate", "ROMEO:", "--seed", "0"],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=env,
                timeout=300,
            )
        )
        assert any(cache.iterdir()), "the first run left no compiled program in the cache"
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith("ROMEO:") and len(runs[0].stdout) > 60
    readme = (ROOT / "README.md").read_text().split('Real output, `gpt-jax generate "ROMEO:" --seed 0`')[1]
    shown = readme.split("```\n")[1]  # the block after that line
    assert runs[0].stdout == shown, "the README shows other output than the command prints"
    one_liner = "import gpt_jax; print(gpt_jax.load().generate('JULIET:', seed=1).texts[0])"
    out = subprocess.run(
        [sys.executable, "-c", one_liner], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert out.returncode == 0 and len(out.stdout.strip()) > 20, out.stderr[-2000:]
