"""Named model shapes: the presets of `gpt-jax train --preset` and `gpt-jax bench --shapes`, and the tests' tiny
configs."""

from __future__ import annotations

from gpt_jax.model.config import ModelConfig

GPT2_SMALL = ModelConfig(
    vocab_size=50257,
    d_model=768,
    n_layers=12,
    n_heads=12,
    mlp_dim=3072,
    max_seq_len=1024,
    norm="layernorm",
    norm_eps=1e-5,
    position="learned",
    mlp="gelu",
    activation="gelu_tanh",
    tie_embeddings=True,
    attn_bias=True,
    mlp_bias=True,
    bos_id=50256,
    eos_ids=(50256,),
    pad_id=50256,
    add_bos=False,
)
GPT2_TINY = GPT2_SMALL.replace(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, mlp_dim=128, max_seq_len=128, bos_id=1, eos_ids=(2,), pad_id=0
)
LLAMA_TINY = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=96, max_seq_len=128)
# A Llama-shaped model of GPT-2-small size: 12 layers, width 768, grouped-query attention (4 kv heads).
LLAMA_SMALL = ModelConfig(
    vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, mlp_dim=2048, max_seq_len=2048
)
# About 1.1 B parameters, the shape of TinyLlama-1.1B.
LLAMA_1B = ModelConfig(
    vocab_size=32000,
    d_model=2048,
    n_layers=22,
    n_heads=32,
    n_kv_heads=4,
    mlp_dim=5632,
    max_seq_len=2048,
    dtype="bfloat16",
)
# The bundled default model (see README: trained on the Shakespeare corpus).
SHAKESPEARE = ModelConfig(
    vocab_size=4000,
    d_model=256,
    n_layers=6,
    n_heads=4,
    mlp_dim=704,
    max_seq_len=256,
    tie_embeddings=True,
    bos_id=1,
    eos_ids=(2,),
    pad_id=3,
)

PRESETS = {
    "gpt2-small": GPT2_SMALL,
    "gpt2-tiny": GPT2_TINY,
    "llama-tiny": LLAMA_TINY,
    "llama-small": LLAMA_SMALL,
    "llama-1b": LLAMA_1B,
    "shakespeare": SHAKESPEARE,
}
