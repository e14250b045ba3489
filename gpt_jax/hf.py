"""Hugging Face checkpoint directories (GPT-2, Llama, Mistral): import into gpt_jax, and export back.

Every config field that changes the computation is mapped or rejected with a clear error. Weights are converted one
tensor at a time from memory-mapped safetensors files, and each tensor's mapped pages are released once converted,
so peak host memory stays near the size of the converted parameters.

Layouts: torch `Linear` stores [out, in], so Llama projections are transposed; GPT-2's `Conv1D` already stores
[in, out], so only the fused q|k|v split and head reshapes are needed. Transformers' rotary layout is the half-split
one `layers.rope` uses, so q/k need no permutation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gpt_jax import safetensors_io
from gpt_jax.config import ModelConfig
from gpt_jax.errors import CheckpointError, ConfigError, check
from gpt_jax.generate import Generator
from gpt_jax.tokenizer import Tokenizer

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


# ---- weight names -----------------------------------------------------------------------------------------------
# Each entry: our flat name -> (hf name, to_ours(array, cfg), to_hf(array, cfg)).
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


def llama_mapping(cfg: ModelConfig) -> Mapping:
    n, k = (lambda c: c.n_heads), (lambda c: c.n_kv_heads)
    m: Mapping = {
        "embed": ("model.embed_tokens.weight", _same, _same),
        "final_norm.scale": ("model.norm.weight", _same, _same),
    }
    if not cfg.tie_embeddings:
        m["lm_head"] = ("lm_head.weight", *_transpose())
    for i in range(cfg.n_layers):
        hf, us = f"model.layers.{i}.", f"layer_{i}."
        m[us + "attn_norm.scale"] = (hf + "input_layernorm.weight", _same, _same)
        m[us + "mlp_norm.scale"] = (hf + "post_attention_layernorm.weight", _same, _same)
        for ours, theirs, heads in (("q", "q_proj", n), ("k", "k_proj", k), ("v", "v_proj", k)):
            m[us + f"attn.{ours}_kernel"] = (hf + f"self_attn.{theirs}.weight", *_linear_in(heads))
            if cfg.attn_bias:
                m[us + f"attn.{ours}_bias"] = (hf + f"self_attn.{theirs}.bias", *_heads_bias(heads))
        m[us + "attn.o_kernel"] = (hf + "self_attn.o_proj.weight", *_linear_out())
        if cfg.attn_bias:
            m[us + "attn.o_bias"] = (hf + "self_attn.o_proj.bias", _same, _same)
        for ours in ("gate", "up", "down"):
            m[us + f"mlp.{ours}_kernel"] = (hf + f"mlp.{ours}_proj.weight", *_transpose())
            if cfg.mlp_bias:
                m[us + f"mlp.{ours}_bias"] = (hf + f"mlp.{ours}_proj.bias", _same, _same)
    return m


def gpt2_mapping(cfg: ModelConfig) -> Mapping:
    """GPT-2's fused c_attn [D, 3D] is split into q, k, v below (see `_gpt2_split`); the rest maps one to one."""
    m: Mapping = {
        "embed": ("transformer.wte.weight", _same, _same),
        "pos_embed": ("transformer.wpe.weight", _same, _same),
        "final_norm.scale": ("transformer.ln_f.weight", _same, _same),
        "final_norm.bias": ("transformer.ln_f.bias", _same, _same),
    }
    if not cfg.tie_embeddings:
        m["lm_head"] = ("lm_head.weight", *_transpose())
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


def _gpt2_split(name: str, w: np.ndarray, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """c_attn weight [D, 3*N*H] or bias [3*N*H] -> q, k, v kernels [D, N, H] or biases [N, H]."""
    layer = name.split(".")[2]
    parts = np.split(w, 3, axis=-1)
    kind = "kernel" if w.ndim == 2 else "bias"
    shape = (cfg.d_model, cfg.n_heads, cfg.head_dim) if w.ndim == 2 else (cfg.n_heads, cfg.head_dim)
    return {f"layer_{layer}.attn.{p}_{kind}": part.reshape(shape) for p, part in zip("qkv", parts)}


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

    from gpt_jax.checkpoint import param_shapes, unflatten

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
                for ours, part in _gpt2_split(name, w, config).items():
                    put(ours, part, name)
                files.where[present[name]].release(present[name])
    return Generator(config, unflatten(flat), load_hf_tokenizer(directory, config), mesh)


def load_hf_tokenizer(directory: Path, config: ModelConfig) -> Tokenizer | None:
    """tokenizer.model (SentencePiece) whatever the model type; else GPT-2 byte-level BPE files; else None."""
    if (directory / "tokenizer.model").is_file():
        from gpt_jax.checkpoint import load_tokenizer

        tok = load_tokenizer(directory, config.vocab_size, config.add_bos, exact=False)
    elif (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file():
        from gpt_jax.bpe import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer.from_directory(directory, config)
    else:
        return None
    return tok
