"""Hugging Face weight names and layouts, in both directions: import (`hf.py`) and export (`hf_export.py`) read the
same table, so a name or a transpose is written once.

Layouts: torch `Linear` stores [out, in], so Llama projections are transposed; GPT-2's `Conv1D` already stores
[in, out], so only the fused q|k|v split and head reshapes are needed. Transformers' rotary layout is the half-split
one `layers.rope` uses, so q/k need no permutation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpt_jax.model.config import ModelConfig

# Each entry: our flat name -> (hf name, to_ours(array, cfg), to_hf(array, cfg)); import-only entries have no to_hf.
Mapping = dict[str, tuple[str, Callable, Callable]]


def _same(x, cfg):
    return x


def _linear_in(heads_of: Callable[[ModelConfig], int]):
    """torch Linear [heads*H, D] <-> ours [D, heads, H]."""
    return (lambda w, c: w.T.reshape(c.d_model, heads_of(c), c.head_dim), lambda w, c: w.reshape(c.d_model, -1).T)


def _linear_out():
    """torch Linear [D, N*H] <-> ours [N, H, D]."""
    return (lambda w, c: w.T.reshape(c.n_heads, c.head_dim, c.d_model), lambda w, c: w.reshape(-1, c.d_model).T)


def _transpose():
    return (lambda w, c: w.T, lambda w, c: w.T)


def _heads_bias(heads_of):
    return (lambda b, c: b.reshape(heads_of(c), c.head_dim), lambda b, c: b.reshape(-1))


def _outside_the_layers(cfg: ModelConfig, names: dict[str, str]) -> Mapping:
    """Embeddings and final norm map one to one; an untied head is a transposed torch Linear."""
    m: Mapping = {ours: (theirs, _same, _same) for ours, theirs in names.items()}
    if not cfg.tie_embeddings:
        m["lm_head"] = ("lm_head.weight", *_transpose())
    return m


def _rows(first: Callable[[ModelConfig], int], last: Callable[[ModelConfig], int | None], inner: Callable):
    """Import rows first..last of a fused torch Linear [out, in], then convert them as `inner` does (export writes
    the unfused names, so there is no way back here)."""
    return (lambda w, c: inner(w[first(c) : last(c)], c), None)


def _fused_phi3(m: Mapping, hf: str, us: str, cfg: ModelConfig) -> None:
    """Phi-3 stores q|k|v as one qkv_proj [(N + 2K) * H, D] and gate|up as one gate_up_proj [2F, D]."""
    q_end = lambda c: c.n_heads * c.head_dim
    k_end = lambda c: (c.n_heads + c.n_kv_heads) * c.head_dim
    heads = {"q": lambda c: c.n_heads, "k": lambda c: c.n_kv_heads, "v": lambda c: c.n_kv_heads}
    spans = {"q": (lambda c: 0, q_end), "k": (q_end, k_end), "v": (k_end, lambda c: None)}
    for ours, (first, last) in spans.items():
        m[us + f"attn.{ours}_kernel"] = (
            hf + "self_attn.qkv_proj.weight",
            *_rows(first, last, _linear_in(heads[ours])[0]),
        )
    for ours, (first, last) in {
        "gate": (lambda c: 0, lambda c: c.mlp_dim),
        "up": (lambda c: c.mlp_dim, lambda c: None),
    }.items():
        m[us + f"mlp.{ours}_kernel"] = (hf + "mlp.gate_up_proj.weight", *_rows(first, last, lambda w, c: w.T))


def _experts(m: Mapping, hf: str, us: str, cfg: ModelConfig) -> None:
    """Mixtral: the router gate [E, D], and each expert's w1 (gate) and w3 (up) [F, D] and w2 (down) [D, F]."""
    moe = hf + "block_sparse_moe."
    m[us + "mlp.router"] = (moe + "gate.weight", *_transpose())
    for e in range(cfg.n_experts):
        for ours, theirs in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            m[us + f"mlp.expert_{e}.{ours}_kernel"] = (f"{moe}experts.{e}.{theirs}.weight", *_transpose())


def llama_mapping(cfg: ModelConfig, fused: bool = False) -> Mapping:
    """Llama-layout names (Mistral, Qwen, Gemma share them); `fused`: Phi-3's fused projections."""
    n, k = (lambda c: c.n_heads), (lambda c: c.n_kv_heads)
    m = _outside_the_layers(cfg, {"embed": "model.embed_tokens.weight", "final_norm.scale": "model.norm.weight"})
    for i in range(cfg.n_layers):
        hf, us = f"model.layers.{i}.", f"layer_{i}."
        m[us + "attn_norm.scale"] = (hf + "input_layernorm.weight", _same, _same)
        if cfg.post_norms:  # Gemma 2 names: post_attention_layernorm is the norm *after* attention
            m[us + "attn_post_norm.scale"] = (hf + "post_attention_layernorm.weight", _same, _same)
            m[us + "mlp_norm.scale"] = (hf + "pre_feedforward_layernorm.weight", _same, _same)
            m[us + "mlp_post_norm.scale"] = (hf + "post_feedforward_layernorm.weight", _same, _same)
        else:
            m[us + "mlp_norm.scale"] = (hf + "post_attention_layernorm.weight", _same, _same)
        if fused:
            _fused_phi3(m, hf, us, cfg)
        for ours, theirs, heads in (("q", "q_proj", n), ("k", "k_proj", k), ("v", "v_proj", k)):
            if not fused:
                m[us + f"attn.{ours}_kernel"] = (hf + f"self_attn.{theirs}.weight", *_linear_in(heads))
            if cfg.attn_bias or cfg.qkv_bias:
                m[us + f"attn.{ours}_bias"] = (hf + f"self_attn.{theirs}.bias", *_heads_bias(heads))
        if cfg.qk_norm:
            for ours in ("q", "k"):
                m[us + f"attn.{ours}_norm.scale"] = (hf + f"self_attn.{ours}_norm.weight", _same, _same)
        m[us + "attn.o_kernel"] = (hf + "self_attn.o_proj.weight", *_linear_out())
        if cfg.attn_bias:
            m[us + "attn.o_bias"] = (hf + "self_attn.o_proj.bias", _same, _same)
        if cfg.n_experts:
            _experts(m, hf, us, cfg)
        for ours in () if cfg.n_experts else ("down",) if fused else ("gate", "up", "down"):
            m[us + f"mlp.{ours}_kernel"] = (hf + f"mlp.{ours}_proj.weight", *_transpose())
            if cfg.mlp_bias:
                m[us + f"mlp.{ours}_bias"] = (hf + f"mlp.{ours}_proj.bias", _same, _same)
    return m


def gpt2_mapping(cfg: ModelConfig) -> Mapping:
    """GPT-2's fused c_attn [D, 3D] is split into q, k, v below (see `gpt2_split`); the rest maps one to one."""
    outside = {"embed": "wte", "pos_embed": "wpe", "final_norm.scale": "ln_f", "final_norm.bias": "ln_f"}
    kind = {"final_norm.bias": "bias"}
    m = _outside_the_layers(cfg, {k: f"transformer.{v}.{kind.get(k, 'weight')}" for k, v in outside.items()})
    for i in range(cfg.n_layers):
        hf, us = f"transformer.h.{i}.", f"layer_{i}."
        for norm, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            m[us + f"{norm}.scale"] = (hf + f"{theirs}.weight", _same, _same)
            m[us + f"{norm}.bias"] = (hf + f"{theirs}.bias", _same, _same)
        m[us + "attn.o_kernel"] = (
            hf + "attn.c_proj.weight",
            lambda w, c: w.reshape(c.n_heads, c.head_dim, -1),
            lambda w, c: w.reshape(-1, c.d_model),
        )
        m[us + "attn.o_bias"] = (hf + "attn.c_proj.bias", _same, _same)
        m[us + "mlp.up_kernel"] = (hf + "mlp.c_fc.weight", _same, _same)  # Conv1D: already [in, out]
        m[us + "mlp.up_bias"] = (hf + "mlp.c_fc.bias", _same, _same)
        m[us + "mlp.down_kernel"] = (hf + "mlp.c_proj.weight", _same, _same)
        m[us + "mlp.down_bias"] = (hf + "mlp.c_proj.bias", _same, _same)
    return m


def gpt2_split(name: str, w: np.ndarray, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """c_attn weight [D, 3*N*H] or bias [3*N*H] -> q, k, v kernels [D, N, H] or biases [N, H]."""
    layer = name.split(".")[2]
    parts = np.split(w, 3, axis=-1)
    kind = "kernel" if w.ndim == 2 else "bias"
    shape = (cfg.d_model, cfg.n_heads, cfg.head_dim) if w.ndim == 2 else (cfg.n_heads, cfg.head_dim)
    return {f"layer_{layer}.attn.{p}_{kind}": part.reshape(shape) for p, part in zip("qkv", parts)}
