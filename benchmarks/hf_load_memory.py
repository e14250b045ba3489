"""Peak host memory while `gpt_jax.load` imports a ~1.2 GB Llama-3-shaped Hugging Face checkpoint (random weights:
vocabulary 128256, untied head, llama3 rope scaling, grouped-query attention).

    python benchmarks/hf_load_memory.py [--dir /tmp/llama-1gb] [--out benchmarks/results/hf_load_memory.json]

Creates the checkpoint with transformers (once), then loads it in a fresh process and reports that process's peak
RSS, its RSS just before loading (interpreter + imports), and both as multiples of the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import gpt_jax, jax
def status_mb(key):  # VmHWM is this process image's own peak (ru_maxrss also counts the parent's, from the fork)
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024
before = status_mb('VmRSS')
t = time.perf_counter()
g = gpt_jax.load(sys.argv[1])
jax.block_until_ready(g.params)
print(json.dumps({"rss_before_mb": before, "peak_rss_mb": status_mb('VmHWM'), "load_s": time.perf_counter() - t,
                  "params": g.config.num_params}))
"""


def make_checkpoint(directory: Path) -> None:
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=128256,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0}
        | {"high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory, safe_serialization=True)


def measure(directory: Path) -> dict:
    """Make the checkpoint in `directory` if it holds none, then load it in a fresh process: the numbers."""
    if not (directory / "config.json").is_file():
        make_checkpoint(directory)
    size_mb = sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20
    out = subprocess.run([sys.executable, "-c", CHILD, str(directory)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(
        checkpoint_mb=size_mb,
        peak_over_size=result["peak_rss_mb"] / size_mb,
        growth_over_size=(result["peak_rss_mb"] - result["rss_before_mb"]) / size_mb,
        machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/gpt_jax_llama3_1gb")
    ap.add_argument("--out", default="benchmarks/results/hf_load_memory.json")
    args = ap.parse_args()
    result = measure(Path(args.dir))
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
