"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: sharded generation equals one device's.

Prints a JSON report; exits non-zero if any mesh differs from the single-device run.
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gpt_jax import GenerationSettings, Generator, InputError, PromptLookup
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.model.transformer import init_params
from gpt_jax.parallel.sharding import make_mesh

assert len(jax.devices()) == 8, jax.devices()
cfg = LLAMA_TINY.replace(d_model=64, n_heads=16, n_kv_heads=8, mlp_dim=128, vocab_size=64)
params = jax.tree_util.tree_map(lambda x: x * 3, init_params(cfg, jax.random.key(0)))  # peaky logits
prompts = [[1, 5, 9, 13], [1, 7], [1, 30, 31, 32, 33, 34], [1, 2], [1, 3, 3]]
kw = {"max_new_tokens": 24, "ignore_eos": True}

single = Generator(cfg, params)
greedy_ref = single.generate_ids(prompts, temperature=0.0, **kw).token_ids
sampled_ref = single.generate_ids(prompts, temperature=1.0, top_p=0.9, seed=7, **kw).token_ids
report = {}
for data, model in [(8, 1), (1, 8), (2, 4), (4, 2)]:
    g = Generator(cfg, params, mesh=make_mesh(data, model))
    q = g.params["layer_0"]["attn"]["q_kernel"]
    assert q.sharding.spec == P(None, "model", None), q.sharding
    assert {s.data.shape for s in q.addressable_shards} == {(64, 16 // model, 4)}
    assert g.params["layer_0"]["mlp"]["down_kernel"].sharding.spec == P("model", None)
    assert g.params["embed"].sharding.spec == P("model", None)
    prep = g.prepare(prompts, GenerationSettings(temperature=0.0, **kw))
    state = g.programs.start(g.params, prep.inputs, buffer=prep.buffer)
    rows = prep.inputs.tokens.shape[0]
    k_shards = {s.data.shape for s in state.cache.k[0].addressable_shards}
    assert k_shards == {((rows // data) * (8 // model), 4, state.cache.length)}, k_shards
    greedy = g.generate_ids(prompts, temperature=0.0, **kw).token_ids
    sampled = g.generate_ids(prompts, temperature=1.0, top_p=0.9, seed=7, **kw).token_ids
    report[f"{data}x{model}"] = {
        "greedy_equal": greedy == greedy_ref,
        "sampled_equal": sampled == sampled_ref,
        "cache_shard": list(next(iter(k_shards))),
    }

# meshes made the standard ways: jax.make_mesh (Explicit axes in this JAX) and Mesh(...) (Auto axes)
standard = {
    "jax.make_mesh": jax.make_mesh((2, 4), ("data", "model")),
    "Mesh": Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model")),
}
for name, mesh in standard.items():
    g = Generator(cfg, params, mesh=mesh)
    report[name] = {
        "axis_types": [str(t) for t in mesh.axis_types],
        "greedy_equal": g.generate_ids(prompts, temperature=0.0, **kw).token_ids == greedy_ref,
        "sampled_equal": g.generate_ids(prompts, temperature=1.0, top_p=0.9, seed=7, **kw).token_ids == sampled_ref,
    }

g, lookup = Generator(cfg, params, mesh=make_mesh(2, 4)), PromptLookup(num_tokens=4)  # per-row cache writes, sharded
report["speculative 2x4"] = {
    "greedy_equal": g.generate_ids(prompts, temperature=0.0, speculative=lookup, **kw).token_ids == greedy_ref,
    "sampled_equal": g.generate_ids(prompts, temperature=1.0, top_p=0.9, seed=7, speculative=lookup, **kw).token_ids
    == sampled_ref,
}

try:
    Generator(cfg.replace(n_kv_heads=4), params, mesh=make_mesh(1, 8))
    report["bad_mesh_error"] = None
except InputError as e:
    report["bad_mesh_error"] = str(e)
print(json.dumps(report))
sys.exit(0 if all(v["greedy_equal"] and v["sampled_equal"] for k, v in report.items() if k != "bad_mesh_error") else 1)
