"""What `pip install .` (not editable) ships: every subpackage, the bundled model and corpus sample, and the
commands that read them: generate, serve and each benchmark, once on a tiny setting, from another directory."""

import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout installed alone into a directory (its dependencies come from this environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp)]
    built = subprocess.run([*build, "--no-build-isolation"], capture_output=True, text=True)
    if built.returncode != 0:  # no setuptools in this environment: let pip bring it
        built = subprocess.run(build, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp.glob("gpt_jax-*.whl")
    target = tmp / "site"
    zipfile.ZipFile(wheel).extractall(target)
    return target


# `gpt-jax` from the installed files
GPT_JAX = [sys.executable, "-c", "import sys; from gpt_jax.cli.main import main; sys.exit(main(sys.argv[1:]))"]


def env_for(installed) -> dict:
    return {**os.environ, "PYTHONPATH": str(installed), "GPT_JAX_COMPILE_CACHE": "off"}


def run(installed, args, cwd, timeout=600):
    return subprocess.run([*GPT_JAX, *args], cwd=cwd, env=env_for(installed), capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_holds_every_subpackage_and_asset(installed, tmp_path):
    source = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "gpt_jax").rglob("*.py"))
    shipped = sorted(p.relative_to(installed).as_posix() for p in (installed / "gpt_jax").rglob("*.py"))
    assert shipped == source
    for asset in ("shakespeare/model.safetensors", "shakespeare/tokenizer.model", "corpus/shakespeare_sample.txt"):
        assert (installed / "gpt_jax" / "assets" / asset).is_file(), asset
    assert (installed / "gpt_jax" / "model" / "kernels" / "row_products.cc").is_file()  # the CPU kernel's source
    rooms = sorted(p.parent.name for p in (ROOT / "gpt_jax").glob("*/__init__.py"))
    code = "import importlib, gpt_jax; [importlib.import_module('gpt_jax.' + r) for r in %r]; print(gpt_jax.__file__)"
    env = {**os.environ, "PYTHONPATH": str(installed)}
    out = subprocess.run([sys.executable, "-c", code % rooms], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).is_relative_to(installed)


def test_generate_and_bench_serve_run_from_the_installed_package(installed, tmp_path):
    out = run(installed, ["generate", "ROMEO:", "--seed", "0", "--max-new-tokens", "12"], tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("ROMEO:") and len(out.stdout) > 12, out.stderr[-2000:]
    args = ["bench-serve", "--rates", "16", "--requests", "6", "--slots", "2", "--prompt-tokens", "8,16"]
    out = run(installed, [*args, "--mean-output", "4", "--json", "serve.json", "--plot", ""], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "serve.json").read_text())
    assert report["results"][0]["rate"] == 16 and report["results"][0]["continuous"]["output_tokens_per_s"] > 0


def test_the_speculative_benchmarks_draft_part_trains_on_the_shipped_corpus(installed, tmp_path):
    args = ["bench", "--speculative", "--parts", "draft", "--draft-steps", "2", "--new-tokens", "8", "--repeats", "1"]
    out = run(installed, [*args, "--out", "spec.json"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    draft = json.loads((tmp_path / "spec.json").read_text())["draft"]
    assert draft["draft_steps"] == 2 and len(draft["tasks"]) == 4
    missing = run(installed, [*args, "--corpus", "nothing.txt"], tmp_path)
    assert missing.returncode == 2 and "--corpus: nothing.txt is not a file" in missing.stderr


def test_serve_answers_from_the_installed_package(installed, tmp_path):
    process = subprocess.Popen(
        [*GPT_JAX, "serve", "--port", "0", "--slots", "2"],
        cwd=tmp_path,
        env=env_for(installed),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        assert match, line + process.stderr.read()
        body = {"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 8, "seed": 0}
        reply = httpx.post(match.group(1) + "/v1/completions", json=body, timeout=120).json()
        assert reply["usage"]["completion_tokens"] == 8 and reply["choices"][0]["text"]
        process.terminate()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_the_decode_benchmark_runs_against_transformers_on_a_tiny_shape(installed, tmp_path):
    args = ["bench", "--shapes", "llama-tiny", "--batches", "1", "--prompt-lens", "8", "--new-tokens", "16"]
    out = run(installed, [*args, "--repeats", "1", "--modes", "greedy", "--out", "decode.json"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert (row["shape"], row["batch"], row["prompt_len"]) == ("llama-tiny", 1, 8)
    for engine in ("gpt_jax", "transformers"):  # a tiny model's timings are noise: only that both engines ran
        assert row[engine]["first_call_s"] > 0 and math.isfinite(row[engine]["decode_tokens_per_s"])
