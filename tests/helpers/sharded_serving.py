"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: the continuous-batching engine on a mesh gives the
tokens that one device's `generate_ids` gives, with prefix-cache hits on the sharded prefill cache. Prints a JSON
report; exits non-zero on any difference."""

import json
import sys

import jax

from gpt_jax import Generator
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.model.transformer import init_params
from gpt_jax.parallel.sharding import make_mesh
from gpt_jax.serving.engine import Engine
from tests.serving import run_requests

assert len(jax.devices()) == 8, jax.devices()
cfg = LLAMA_TINY.replace(d_model=64, n_heads=16, n_kv_heads=8, mlp_dim=128, vocab_size=64)
params = jax.tree_util.tree_map(lambda x: x * 3, init_params(cfg, jax.random.key(0)))  # peaky logits
prompts = [[1, 5, 9, 13], [1, 7], [1, 30, 31, 32, 33, 34] * 5, [1, 2], [1, 3, 3]]
items = [(p, {"max_new_tokens": 8 + 5 * i, "temperature": 0.0}) for i, p in enumerate(prompts)]
items += [
    (p, {"max_new_tokens": 20, "temperature": 1.0, "top_p": 0.9, "seed": 7 + i, "n": 2}) for i, p in enumerate(prompts)
]

single = Generator(cfg, params)
want = [single.generate_ids([p], **s).token_ids for p, s in items]
report = {}
for data, model in [(2, 4)]:
    g = Generator(cfg, params, mesh=make_mesh(data, model))
    engine = Engine(g, slots_count=8, chunk=16)
    try:
        results = run_requests(engine, items)
        got = [r["tokens"] for r in results]
        cached = sum(r["cached"] for r in results)  # the 30-token prompt's second request finds its first block
        shards = {s.data.shape for s in engine.state.cache.k[0].addressable_shards}
    finally:
        engine.close()
    report[f"{data}x{model}"] = {"equal": got == want, "cache_shard": list(next(iter(shards))), "cached": cached}
print(json.dumps(report))
sys.exit(0 if all(r["equal"] and r["cached"] > 0 for r in report.values()) else 1)
