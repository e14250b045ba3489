"""One of two localhost processes (2 CPU devices each): python two_hosts.py MODEL_DIR PORT RANK OUT_JSON."""

import json
import sys

model_dir, port, rank, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

import jax  # noqa: E402

import gpt_jax  # noqa: E402
from gpt_jax import distributed  # noqa: E402

distributed.initialize(f"127.0.0.1:{port}", 2, rank)
assert jax.process_count() == 2 and jax.local_device_count() == 2 and jax.device_count() == 4
gen = gpt_jax.load(model_dir, mesh=distributed.local_mesh())
prompts = ["ROMEO:", "JULIET: O", "A", "To be, or not", "KING:"]
greedy = distributed.generate(gen, prompts, max_new_tokens=16, temperature=0.0, ignore_eos=True)
sampled = distributed.generate(gen, prompts, max_new_tokens=16, seed=5, temperature=1.0, ignore_eos=True)
top_seed = distributed.generate(gen, prompts, max_new_tokens=8, seed=2**32 - 1, temperature=1.0, ignore_eos=True)
if rank == 0:
    with open(out_path, "w") as f:
        out = {"greedy": greedy.token_ids, "sampled": sampled.token_ids, "texts": greedy.texts}
        json.dump({**out, "top_seed": top_seed.token_ids, "top_seed_seed": top_seed.seed}, f)
else:
    assert greedy is None and sampled is None and top_seed is None
