"""Under 8 forced CPU devices: training steps on meshes 8x1 and 2x4 match one device's (to float tolerance)."""

import json
import sys

import jax
import numpy as np

from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.parallel.sharding import make_mesh
from gpt_jax.text.tokenizer import Tokenizer
from gpt_jax.training.corpus import Corpus
from gpt_jax.training.config import TrainConfig
from gpt_jax.training.trainer import Trainer

tok = Tokenizer(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
cfg = LLAMA_TINY.replace(vocab_size=tok.vocab_size, pad_id=3, n_heads=8, n_kv_heads=4, d_model=64, mlp_dim=128)
tc = TrainConfig(
    steps=4, batch_size=8, seq_len=32, warmup_steps=1, eval_every=4, eval_windows=4, block_tokens=256, val_every=5
)
corpus = Corpus.from_text(text, tok, tc)
report = {}
single = Trainer(cfg, tok, corpus, tc, mesh=make_mesh(1, 1, jax.devices()[:1]))
single.run(progress=False)
for data, model in [(8, 1), (2, 4)]:
    t = Trainer(cfg, tok, corpus, tc, mesh=make_mesh(data, model))
    q = t.params["layer_0"]["attn"]["q_kernel"]
    assert {s.data.shape for s in q.addressable_shards} == {(64, 8 // model, 8)}
    t.run(progress=False)
    diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(t.params))
    )
    report[f"{data}x{model}"] = {"max_param_diff": diff, "loss": t.history[-1]["val_nats_per_token"]}
report["single_loss"] = single.history[-1]["val_nats_per_token"]
print(json.dumps(report))
