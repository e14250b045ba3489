"""Two processes on localhost (gloo collectives, 2 CPU devices each) give the single-process tokens."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import gpt_jax
from gpt_jax import Generator
from gpt_jax.checkpoints import checkpoint
from gpt_jax.model.presets import LLAMA_TINY

HELPER = Path(__file__).parent / "helpers" / "two_hosts.py"
PROMPTS = ["ROMEO:", "JULIET: O", "A", "To be, or not", "KING:"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_localhost_processes_match_one(small_tokenizer, tmp_path):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    model_dir = checkpoint.save(Generator.from_config(cfg, small_tokenizer, jax.random.key(6)), tmp_path / "m")
    single = gpt_jax.load(model_dir)
    greedy = single.generate(PROMPTS, max_new_tokens=16, temperature=0.0, ignore_eos=True)
    sampled = single.generate(PROMPTS, max_new_tokens=16, seed=5, temperature=1.0, ignore_eos=True)
    top_seed = single.generate(PROMPTS, max_new_tokens=8, seed=2**32 - 1, temperature=1.0, ignore_eos=True)

    port, out = free_port(), tmp_path / "out.json"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), str(model_dir), str(port), str(rank), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    result = json.loads(out.read_text())
    assert result["greedy"] == greedy.token_ids
    assert result["sampled"] == sampled.token_ids
    assert result["texts"] == greedy.texts
    assert result["top_seed_seed"] == 2**32 - 1 and result["top_seed"] == top_seed.token_ids  # all 32 bits cross
