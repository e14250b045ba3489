"""Hugging Face `config.json` (and `generation_config.json`) -> `ModelConfig`: one small mapping per family.

Every field that changes the computation is mapped, or refused with a typed error that names it. Rotary positions
and sliding windows, which transformers has written in two forms, are read by `positions.py`.
"""

from __future__ import annotations

import dataclasses

from gpt_jax.checkpoints.hf.fields import Fields
from gpt_jax.checkpoints.hf.positions import ropes, rotary_dim, sliding_layers
from gpt_jax.errors import CheckpointError, ConfigError, check
from gpt_jax.model.config import ModelConfig

ACTIVATIONS = {  # the MLP activations each family's checkpoints name, and ours
    "gemma": {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"},  # "gelu" is Gemma 1's legacy name for tanh
    "gemma2": {"gelu_pytorch_tanh": "gelu_tanh"},
    "gemma3_text": {"gelu_pytorch_tanh": "gelu_tanh"},
}
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "gelu_fast": "gelu_tanh",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """What sets a rotary family apart from Llama, as `ModelConfig` features."""

    qkv_bias: bool = False  # biases on q, k and v, none on the output projection (Qwen 2)
    qk_norm: bool = False  # each query and key head normalized (Qwen 3, Gemma 3)
    gemma: bool = False  # (1 + w) norms, embeddings scaled by sqrt(D), tied embeddings by default
    gemma2: bool = False  # post-norms, a query scalar, soft-capped scores and logits (Gemma 2 and 3)
    experts: bool = False  # a sparse mixture of experts (Mixtral)
    adds_bos: bool = True  # its tokenizers prepend BOS (Qwen's prepend nothing)


FAMILIES = {  # every rotary family this import reads; "gpt2" is mapped on its own (`_gpt2`)
    "llama": Family(),
    "mistral": Family(),
    "mixtral": Family(experts=True),
    "qwen2": Family(qkv_bias=True, adds_bos=False),
    "qwen3": Family(qk_norm=True, adds_bos=False),
    "gemma": Family(gemma=True),
    "gemma2": Family(gemma=True, gemma2=True),
    "gemma3_text": Family(gemma=True, gemma2=True, qk_norm=True),
    "phi3": Family(),
}
SUPPORTED = ("gpt2", *FAMILIES)


def config_from_hf(raw: dict, generation: dict | None = None, source: str = "config.json") -> ModelConfig:
    """A `ModelConfig` equivalent to a Hugging Face config dict (plus generation_config.json, if any)."""
    kind = raw.get("model_type")
    check(kind in SUPPORTED, CheckpointError, f"{source}: unsupported model_type {kind!r}; supported: {SUPPORTED}")
    f, g = Fields(raw, source), Fields(generation or {}, f"{source} (generation_config.json)")
    special = {"bos": g.int("bos_token_id", f.int("bos_token_id")), "pad": f.int("pad_token_id")}
    special["eos"] = g.ids("eos_token_id") or f.ids("eos_token_id")
    try:
        return _gpt2(f, **special) if kind == "gpt2" else _rotary(f, kind, FAMILIES[kind], **special)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _gpt2(f: Fields, bos, eos, pad) -> ModelConfig:
    """GPT-2: learned positions, LayerNorm, a GELU MLP, biases everywhere."""
    act = f.get("activation_function", (str,), "gelu_new")
    check(act in GPT2_ACTIVATIONS, ConfigError, f"{f.source}: activation_function {act!r} is not supported")
    check(
        not f.get("scale_attn_by_inverse_layer_idx", (bool,), False),
        ConfigError,
        f"{f.source}: scale_attn_by_inverse_layer_idx=true is not supported",
    )
    scaled = f.get("scale_attn_weights", (bool,), True)
    check(scaled, ConfigError, f"{f.source}: scale_attn_weights=false is not supported")
    d = f.int("n_embd", required=True)
    eos = eos or (50256,)
    return ModelConfig(
        vocab_size=f.int("vocab_size", required=True),
        d_model=d,
        n_layers=f.int("n_layer", required=True),
        n_heads=f.int("n_head", required=True),
        mlp_dim=f.int("n_inner") or 4 * d,
        max_seq_len=f.int("n_positions", required=True),
        norm="layernorm",
        norm_eps=f.float("layer_norm_epsilon", 1e-5),
        position="learned",
        mlp="gelu",
        activation=GPT2_ACTIVATIONS[act],
        tie_embeddings=f.get("tie_word_embeddings", (bool,), True),
        attn_bias=True,
        mlp_bias=True,
        bos_id=-1 if bos is None else bos,
        eos_ids=eos,
        pad_id=pad if pad is not None else eos[0],
        add_bos=False,
    )


def _rotary(f: Fields, kind: str, family: Family, bos, eos, pad) -> ModelConfig:
    """Llama and the families built on it: rotary positions, RMSNorm, a gated MLP, and `family`'s features."""
    acts = ACTIVATIONS.get(kind, {"silu": "silu"})
    act = f.get("hidden_activation", (str,)) or f.get("hidden_act", (str,), next(iter(acts)))
    check(act in acts, ConfigError, f"{f.source}: hidden activation {act!r} is not supported ({sorted(acts)})")
    check(
        not f.get("use_bidirectional_attention", (bool,), False),
        ConfigError,
        f"{f.source}: use_bidirectional_attention=true is not supported",
    )
    max_len = f.int("max_position_embeddings", 2048)
    window, layer_types = sliding_layers(f, kind)
    n_heads, d = f.int("num_attention_heads", required=True), f.int("hidden_size", required=True)
    eos = eos or (2,)
    theta, scaling, local_theta, local_scaling = ropes(f, kind)
    head_dim = f.int("head_dim") or (d // n_heads if n_heads > 0 else 0)
    return ModelConfig(
        vocab_size=f.int("vocab_size", required=True),
        d_model=d,
        n_layers=f.int("num_hidden_layers", required=True),
        n_heads=n_heads,
        n_kv_heads=f.int("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        mlp_dim=f.int("intermediate_size", required=True),
        # dynamic scaling stretches max_position_embeddings by its factor: that is the context it is made for
        max_seq_len=int(max_len * scaling.factor) if scaling.type == "dynamic" else max_len,
        norm="rmsnorm",
        norm_eps=f.float("rms_norm_eps", 1e-6),
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=local_theta,
        local_rope_scaling=local_scaling,
        rotary_dim=rotary_dim(f, kind, head_dim),
        mlp="swiglu",  # gated: act(gate) * up, GeGLU with Gemma's tanh GELU
        activation=acts[act],
        tie_embeddings=f.get("tie_word_embeddings", (bool,), family.gemma),
        attn_bias=f.get("attention_bias", (bool,), False),
        qkv_bias=family.qkv_bias,
        qk_norm=family.qk_norm,
        norm_offset=1.0 if family.gemma else 0.0,
        embed_scale=family.gemma,
        sliding_window=window,
        layer_types=layer_types,
        mlp_bias=f.get("mlp_bias", (bool,), False),
        bos_id=-1 if bos is None else bos,
        eos_ids=eos,
        pad_id=pad if pad is not None and pad >= 0 else eos[0],
        add_bos=bos is not None and family.adds_bos,
        **_gemma2_features(f, family),
        **_expert_features(f, family),
    )


def _gemma2_features(f: Fields, family: Family) -> dict:
    if not family.gemma2:
        return {}
    return {
        "post_norms": True,
        "attn_scalar": f.float("query_pre_attn_scalar", 256.0),
        "attn_softcap": f.float("attn_logit_softcapping", 0.0),
        "final_softcap": f.float("final_logit_softcapping", 0.0),
    }


def _expert_features(f: Fields, family: Family) -> dict:
    if not family.experts:
        return {}
    experts, chosen = f.int("num_local_experts", required=True), f.int("num_experts_per_tok", required=True)
    return {"n_experts": experts, "experts_per_token": chosen}


def generation_defaults(generation: dict | None, source: str = "generation_config.json") -> dict:
    """The sampling settings a generation_config.json asks for, as transformers reads them: with do_sample true,
    its temperature, top_p and top_k (transformers' own defaults 1.0, 1.0 and 50 where it names none) and min_p;
    with do_sample false, greedy decoding; a repetition_penalty either way. A file that does not mention do_sample
    (most base models' list only token ids) leaves this project's defaults in place."""
    g = Fields(generation or {}, source)
    sample = g.get("do_sample", (bool,))
    out = {}
    if sample is False:
        out["temperature"] = 0.0
    elif sample:
        out.update(temperature=g.float("temperature", 1.0), top_p=g.float("top_p", 1.0), top_k=g.int("top_k", 50))
        out["min_p"] = g.float("min_p", 0.0)
    if g.get("repetition_penalty", (int, float)) is not None:
        out["repetition_penalty"] = g.float("repetition_penalty", 1.0)
    return out
