"""Sharded generation on 8 forced CPU devices (a subprocess: the device count is fixed at JAX start-up)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from gpt_jax import InputError
from gpt_jax.parallel.sharding import make_mesh, parse_mesh

from .conftest import shared_cache_env

HELPER = Path(__file__).parent / "helpers" / "sharded_generation.py"


@pytest.mark.slow
def test_meshes_give_the_single_device_tokens():
    env = {
        **shared_cache_env(),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    out = subprocess.run([sys.executable, str(HELPER)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for mesh in ("8x1", "1x8", "2x4", "4x2", "jax.make_mesh", "Mesh", "speculative 2x4"):
        assert report[mesh]["greedy_equal"] and report[mesh]["sampled_equal"], report
    assert "Explicit" in report["jax.make_mesh"]["axis_types"][0], report  # the case that used to crash
    assert "n_kv_heads=4 does not divide over the mesh's model axis of size 8" in report["bad_mesh_error"]


@pytest.mark.slow
def test_the_serving_engine_on_a_mesh_gives_one_devices_tokens():
    env = {
        **shared_cache_env(),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    helper = Path(__file__).parent / "helpers" / "sharded_serving.py"
    out = subprocess.run([sys.executable, str(helper)], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["2x4"]["equal"], report
    assert report["2x4"]["cache_shard"] == [8, 4, 128], report  # 8 slots x 8 kv heads over 8 devices


def test_mesh_arguments_are_checked():
    n = len(jax.devices())
    with pytest.raises(InputError, match=f"needs {2 * n} devices, {n} are available"):
        make_mesh(2, n)
    with pytest.raises(InputError, match="--mesh must look like data=2,model=4"):
        parse_mesh("rows=2")
    assert parse_mesh(f"data={n},model=1").shape == {"data": n, "model": 1}


@pytest.mark.slow
def test_sharded_training_matches_one_device(small_tokenizer, corpus_slice, tmp_path):
    model = tmp_path / "tok.model"
    model.write_bytes(small_tokenizer.model_bytes)
    env = {
        **shared_cache_env(),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    helper = Path(__file__).parent / "helpers" / "sharded_training.py"
    out = subprocess.run(
        [sys.executable, str(helper), str(model), str(corpus_slice)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for mesh in ("8x1", "2x4"):
        assert report[mesh]["max_param_diff"] < 1e-4, report
        assert abs(report[mesh]["loss"] - report["single_loss"]) < 1e-4, report
