"""Hugging Face checkpoint directories (GPT-2, Llama, Mistral): import into gpt_jax, and export back.

Every config field that changes the computation is mapped or rejected with a clear error. Weights are converted one
tensor at a time from memory-mapped safetensors files, and each tensor's mapped pages are released once converted,
so peak host memory stays near the size of the converted parameters.

Weight names and layouts are in `hf_names.py`, shared with the export.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gpt_jax import safetensors_io
from gpt_jax.config import ModelConfig
from gpt_jax.errors import CheckpointError, ConfigError, check
from gpt_jax.generate import Generator
from gpt_jax.hf_names import gpt2_mapping, gpt2_split, llama_mapping
from gpt_jax.params import param_shapes, unflatten
from gpt_jax.tokenizer_files import load_tokenizer

SUPPORTED = ("gpt2", "llama", "mistral")
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "gelu_fast": "gelu_tanh",
}


def _rope_theta(raw: dict, source: str) -> float:
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    check(
        kind == "default",
        ConfigError,
        f"{source}: rope scaling type {kind!r} is not supported (only unscaled rotary embeddings)",
    )
    return float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def config_from_hf(raw: dict, generation: dict | None = None, source: str = "config.json") -> ModelConfig:
    """A `ModelConfig` equivalent to a Hugging Face config dict (plus generation_config.json, if any)."""
    kind = raw.get("model_type")
    check(kind in SUPPORTED, CheckpointError, f"{source}: unsupported model_type {kind!r}; supported: {SUPPORTED}")
    gen = generation or {}
    bos = gen.get("bos_token_id", raw.get("bos_token_id"))
    eos = _ids(gen.get("eos_token_id", raw.get("eos_token_id")))
    try:
        if kind == "gpt2":
            act = raw.get("activation_function", "gelu_new")
            check(act in GPT2_ACTIVATIONS, ConfigError, f"{source}: activation_function {act!r} is not supported")
            check(
                not raw.get("scale_attn_by_inverse_layer_idx", False),
                ConfigError,
                f"{source}: scale_attn_by_inverse_layer_idx=true is not supported",
            )
            check(
                raw.get("scale_attn_weights", True), ConfigError, f"{source}: scale_attn_weights=false is not supported"
            )
            d = raw["n_embd"]
            eos = eos or (50256,)
            return ModelConfig(
                vocab_size=raw["vocab_size"],
                d_model=d,
                n_layers=raw["n_layer"],
                n_heads=raw["n_head"],
                mlp_dim=raw.get("n_inner") or 4 * d,
                max_seq_len=raw["n_positions"],
                norm="layernorm",
                norm_eps=raw.get("layer_norm_epsilon", 1e-5),
                position="learned",
                mlp="gelu",
                activation=GPT2_ACTIVATIONS[act],
                tie_embeddings=raw.get("tie_word_embeddings", True),
                attn_bias=True,
                mlp_bias=True,
                bos_id=-1 if bos is None else bos,
                eos_ids=eos,
                pad_id=raw.get("pad_token_id") if raw.get("pad_token_id") is not None else eos[0],
                add_bos=False,
            )
        act = raw.get("hidden_act", "silu")
        check(act == "silu", ConfigError, f"{source}: hidden_act {act!r} is not supported (silu only)")
        max_len = raw.get("max_position_embeddings", 2048)
        window = raw.get("sliding_window") if kind == "mistral" else None
        if window:  # full attention equals sliding-window attention up to the window: cap the context there
            max_len = min(max_len, window)
        n_heads = raw["num_attention_heads"]
        eos = eos or (2,)
        pad = raw.get("pad_token_id")
        return ModelConfig(
            vocab_size=raw["vocab_size"],
            d_model=raw["hidden_size"],
            n_layers=raw["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=raw.get("num_key_value_heads") or n_heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // n_heads,
            mlp_dim=raw["intermediate_size"],
            max_seq_len=max_len,
            norm="rmsnorm",
            norm_eps=raw.get("rms_norm_eps", 1e-6),
            position="rope",
            rope_theta=_rope_theta(raw, source),
            mlp="swiglu",
            activation="silu",
            tie_embeddings=raw.get("tie_word_embeddings", False),
            attn_bias=raw.get("attention_bias", False),
            mlp_bias=raw.get("mlp_bias", False),
            bos_id=-1 if bos is None else bos,
            eos_ids=eos,
            pad_id=pad if pad is not None and pad >= 0 else eos[0],
            add_bos=bos is not None,
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing field {e.args[0]!r} for model_type {kind!r}") from None
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


class _WeightFiles:
    """The tensors of `model.safetensors` or of the shards an index names, memory-mapped, by name."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        single = directory / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                check(
                    (directory / shard).is_file(),
                    CheckpointError,
                    f"{directory / shard}: missing shard named in {index.name}",
                )
        else:
            bins = [p.name for p in directory.glob("*.bin")]
            check(
                single.is_file(),
                CheckpointError,
                f"{single}: missing"
                + (f" (found {bins}: pickle weights are never loaded; convert to safetensors)" if bins else ""),
            )
            shards = [single.name]
        self.files = [safetensors_io.SafetensorsFile(directory / s) for s in shards]
        self.where = {name: f for f in self.files for name in f.names}

    def names(self) -> set[str]:
        return set(self.where)


def _strip_prefix(names: set[str], model_type: str) -> dict[str, str]:
    """GPT2Model checkpoints omit 'transformer.'; map canonical names to the names present."""
    if model_type == "gpt2" and not any(n.startswith("transformer.") for n in names):
        return {f"transformer.{n}" if n != "lm_head.weight" else n: n for n in names}
    return {n: n for n in names}


def load(directory: Path, raw: dict, dtype: str | None = None, mesh=None) -> Generator:
    """Load a Hugging Face directory as a `Generator` (weights converted to `dtype`, default float32)."""
    gen_path = directory / "generation_config.json"
    generation = json.loads(gen_path.read_text()) if gen_path.is_file() else None
    config = config_from_hf(raw, generation, str(directory / "config.json")).replace(dtype=dtype or "float32")
    files = _WeightFiles(directory)
    present = _strip_prefix(files.names(), raw["model_type"])
    mapping = llama_mapping(config) if config.position == "rope" else gpt2_mapping(config)
    needed = {hf for hf, _, _ in mapping.values()}
    if config.position == "learned":
        needed |= {f"transformer.h.{i}.attn.c_attn.{p}" for i in range(config.n_layers) for p in ("weight", "bias")}
    missing = sorted(needed - set(present))
    check(not missing, CheckpointError, f"{directory}: missing weights {missing[:6]}")

    expected = param_shapes(config)
    target = jnp.dtype(config.dtype)
    flat: dict = {}

    def take(hf_name: str) -> np.ndarray:
        actual = present[hf_name]
        return files.where[actual].get(actual)

    def put(ours: str, array: np.ndarray, hf_name: str) -> None:
        want = tuple(expected[ours].shape)
        check(
            tuple(array.shape) == want,
            CheckpointError,
            f"{directory}: weight {hf_name!r} converts to shape {tuple(array.shape)}, expected {want} for {ours!r}",
        )
        flat[ours] = jnp.asarray(np.asarray(array, dtype=np.float32) if array.dtype != target else array, dtype=target)

    for ours, (hf_name, to_ours, _) in mapping.items():
        w = take(hf_name)
        try:
            converted = to_ours(w, config)
        except ValueError:
            raise CheckpointError(
                f"{directory}: weight {hf_name!r} has shape {tuple(w.shape)}, which does not fit "
                f"{ours!r} {tuple(expected[ours].shape)}"
            ) from None
        put(ours, converted, hf_name)
        files.where[present[hf_name]].release(present[hf_name])
    if config.position == "learned":
        for i in range(config.n_layers):
            for p in ("weight", "bias"):
                name = f"transformer.h.{i}.attn.c_attn.{p}"
                w = take(name)
                check(
                    w.shape[-1] == 3 * config.n_heads * config.head_dim,
                    CheckpointError,
                    f"{directory}: weight {name!r} has shape {tuple(w.shape)}, expected last axis "
                    f"{3 * config.n_heads * config.head_dim}",
                )
                for ours, part in gpt2_split(name, w, config).items():
                    put(ours, part, name)
                files.where[present[name]].release(present[name])
    return Generator(config, unflatten(flat), load_tokenizer(directory, config, exact=False), mesh)
