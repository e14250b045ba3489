"""Export to a Hugging Face directory layout: Llama-style configs as `llama`, GPT-2-style ones as `gpt2`.

The inverse of `hf.py`'s import, through the same name mappings, so `transformers.AutoModelForCausalLM` loads what
`gpt_jax.save(generator, dir, format="hf")` writes.
"""

from __future__ import annotations

import numpy as np

from gpt_jax.checkpoints.hf.names import gpt2_mapping, llama_mapping
from gpt_jax.errors import CheckpointError, check
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.params import flatten


def hf_config(config: ModelConfig) -> dict:
    """The `config.json` dict of the Hugging Face model (`llama` or `gpt2`) equivalent to `config`."""
    eos = list(config.eos_ids)
    common = {
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": None if config.bos_id < 0 else config.bos_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": config.pad_id,
        "torch_dtype": config.dtype,
    }
    if is_llama_like(config):
        return {
            **common,
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": config.d_model,
            "intermediate_size": config.mlp_dim,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": config.n_heads,
            "num_key_value_heads": config.n_kv_heads,
            "head_dim": config.head_dim,
            "max_position_embeddings": config.max_seq_len,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta,
            "hidden_act": "silu",
            "attention_bias": config.attn_bias,
            "mlp_bias": config.mlp_bias,
        }
    check(
        is_gpt2_like(config),
        CheckpointError,
        "format='hf' needs a Llama-style (rmsnorm, rope, swiglu, silu; no q/k norms, no q/k/v-only biases, "
        "whole-head unscaled rotary, no sliding window, no experts) or GPT-2-style (layernorm, learned positions, "
        "gelu MLP, biases) config",
    )
    check(config.tie_embeddings, CheckpointError, "format='hf' for GPT-2 style needs tied embeddings")
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[config.activation]
    return {
        **common,
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.mlp_dim,
        "n_positions": config.max_seq_len,
        "layer_norm_epsilon": config.norm_eps,
        "activation_function": act,
    }


def is_llama_like(config: ModelConfig) -> bool:
    """Exactly what a `llama` config.json can express (no q/k norms, no q/k/v-only biases, unscaled rotary)."""
    return (
        (config.norm, config.position, config.mlp, config.activation) == ("rmsnorm", "rope", "swiglu", "silu")
        and not (config.qkv_bias or config.qk_norm)
        and config.rope_scaling.type == "default"
        and not (config.local_rope_theta or config.rotary_dim or config.n_experts)
        and config.sliding_window == 0
        and not (config.norm_offset or config.embed_scale or config.post_norms)
        and not (config.attn_scalar or config.attn_softcap or config.final_softcap)
    )


def is_gpt2_like(config: ModelConfig) -> bool:
    return (
        (config.norm, config.position, config.mlp) == ("layernorm", "learned", "gelu")
        and config.attn_bias
        and config.mlp_bias
        and config.activation in ("gelu_tanh", "gelu", "relu")
    )


def export_tensors(config: ModelConfig, params: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, tensors by Hugging Face name) for a Llama-style or GPT-2-style config."""
    config_dict = hf_config(config)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    gpt2_like = config_dict["model_type"] == "gpt2"
    mapping = gpt2_mapping(config) if gpt2_like else llama_mapping(config)
    tensors = {hf: to_hf(flat[ours], config) for ours, (hf, _, to_hf) in mapping.items()}
    if gpt2_like:
        for i in range(config.n_layers):
            a = f"layer_{i}.attn."
            tensors[f"transformer.h.{i}.attn.c_attn.weight"] = np.concatenate(
                [flat[a + f"{p}_kernel"].reshape(config.d_model, -1) for p in "qkv"], axis=-1
            )
            tensors[f"transformer.h.{i}.attn.c_attn.bias"] = np.concatenate(
                [flat[a + f"{p}_bias"].reshape(-1) for p in "qkv"], axis=-1
            )
    return config_dict, tensors
