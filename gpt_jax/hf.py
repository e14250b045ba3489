"""Hugging Face checkpoint directories (GPT-2, Llama 1-3, Mistral, Qwen 2/3, Gemma 1/2, Phi-3) imported into gpt_jax.

Every config field that changes the computation is mapped or rejected with a clear error. Weights are converted one
tensor at a time from memory-mapped safetensors files, and each tensor's mapped pages are released once converted,
so peak host memory stays near the size of the converted parameters.

Weight names and layouts are in `hf_names.py`, shared with the export.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gpt_jax import safetensors_io
from gpt_jax.config import ModelConfig
from gpt_jax.errors import CheckpointError, ConfigError, check
from gpt_jax.generate import Generator
from gpt_jax.hf_names import gpt2_mapping, gpt2_split, llama_mapping
from gpt_jax.model import param_shapes
from gpt_jax.params import unflatten
from gpt_jax.rope import RopeScaling
from gpt_jax.json_files import read_json_object
from gpt_jax.tokenizer_files import load_tokenizer

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")
ACTIVATIONS = {  # the MLP activations each family's checkpoints name, and ours
    "gemma": {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"},  # "gelu" is Gemma 1's legacy name for tanh
    "gemma2": {"gelu_pytorch_tanh": "gelu_tanh"},
}
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "gelu_fast": "gelu_tanh",
}


class _Fields:
    """Typed reads of a config dict: a field of the wrong type is a CheckpointError naming the file and the field."""

    def __init__(self, raw: dict, source: str):
        self.raw, self.source = raw, source

    def get(self, name: str, kinds: tuple[type, ...], default=None, required: bool = False):
        if name not in self.raw or self.raw[name] is None:
            check(not required, CheckpointError, f"{self.source}: missing field {name!r}")
            return default
        value = self.raw[name]
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        names = " or ".join(k.__name__ for k in kinds)
        check(ok, CheckpointError, f"{self.source}: field {name!r} must be {names}, got {str(value)[:80]!r}")
        return value

    def int(self, name: str, default=None, required: bool = False) -> int:
        return self.get(name, (int,), default, required)

    def float(self, name: str, default: float) -> float:
        return float(self.get(name, (int, float), default))

    def ids(self, name: str) -> tuple[int, ...]:
        """A token id or a list of them (e.g. eos_token_id)."""
        value = self.get(name, (int, list), ())
        value = [value] if isinstance(value, int) else value
        check(
            all(isinstance(v, int) and not isinstance(v, bool) for v in value),
            CheckpointError,
            f"{self.source}: field {name!r} must be a token id or a list of token ids, got {str(value)[:80]!r}",
        )
        return tuple(value)


ROPE_KEYS = {  # the rope-parameter keys each type reads; any other key that changes the math is refused by name
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "truncate"},
}
ROPE_IGNORED = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}  # the last is checked on its own


def _rope(f: _Fields) -> tuple[float, RopeScaling]:
    """(theta, scaling) from either form: transformers 5's `rope_parameters`, or `rope_theta` + `rope_scaling`."""
    rope = f.get("rope_parameters", (dict,)) or f.get("rope_scaling", (dict,)) or {}
    r = _Fields(rope, f"{f.source} (rope parameters)")
    kind = r.get("rope_type", (str,)) or r.get("type", (str,), "default")
    check(
        kind in ROPE_KEYS,
        ConfigError,
        f"{f.source}: rope scaling type {kind!r} is not supported (supported: {sorted(ROPE_KEYS)})",
    )
    unknown = sorted(set(rope) - ROPE_KEYS[kind] - ROPE_IGNORED)
    check(not unknown, ConfigError, f"{f.source}: rope parameters {unknown} are not supported for type {kind!r}")
    check(
        r.float("partial_rotary_factor", f.float("partial_rotary_factor", 1.0)) == 1.0,
        ConfigError,
        f"{f.source}: partial_rotary_factor != 1 is not supported",
    )
    theta = r.float("rope_theta", 0.0) or f.float("rope_theta", 10000.0)
    if kind == "default":
        return theta, RopeScaling()
    defaults = RopeScaling()
    return theta, RopeScaling(
        type=kind,
        factor=r.float("factor", 1.0),
        original_context=r.int("original_max_position_embeddings", f.int("max_position_embeddings", 2048)),
        low_freq_factor=r.float("low_freq_factor", defaults.low_freq_factor),
        high_freq_factor=r.float("high_freq_factor", defaults.high_freq_factor),
        beta_fast=r.float("beta_fast", defaults.beta_fast),
        beta_slow=r.float("beta_slow", defaults.beta_slow),
        attention_factor=r.float("attention_factor", 0.0),
        truncate=r.get("truncate", (bool,), True),
    )


LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _sliding_layers(f: _Fields, kind: str) -> tuple[int, tuple[str, ...]]:
    """(window, per-layer types). Mistral: every layer sliding when `sliding_window` is set. Qwen 2/3: only with
    `use_sliding_window`, from `layer_types` (transformers 5) or layers from `max_window_layers` on. Gemma 2: from
    `layer_types`, or every other layer from the first."""
    if kind in ("llama", "gemma"):
        return 0, ()
    if kind in ("mistral", "phi3"):
        return f.int("sliding_window") or 0, ()
    if kind in ("qwen2", "qwen3") and not f.get("use_sliding_window", (bool,), False):
        return 0, ()
    window, n = f.int("sliding_window", required=True), f.int("num_hidden_layers", required=True)
    names = f.get("layer_types", (list,))
    if names is None and kind == "gemma2":  # layers 0, 2, 4, ... slide
        return window, tuple("sliding" if i % 2 == 0 else "full" for i in range(n))
    if names is None:
        first = f.int("max_window_layers", n)
        return window, tuple("sliding" if i >= first else "full" for i in range(n))
    check(
        all(name in LAYER_TYPES for name in names),
        ConfigError,
        f"{f.source}: layer_types {sorted(set(map(str, names)) - set(LAYER_TYPES))} are not supported",
    )
    return window, tuple(LAYER_TYPES[name] for name in names)


def config_from_hf(raw: dict, generation: dict | None = None, source: str = "config.json") -> ModelConfig:
    """A `ModelConfig` equivalent to a Hugging Face config dict (plus generation_config.json, if any)."""
    kind = raw.get("model_type")
    check(kind in SUPPORTED, CheckpointError, f"{source}: unsupported model_type {kind!r}; supported: {SUPPORTED}")
    f, g = _Fields(raw, source), _Fields(generation or {}, f"{source} (generation_config.json)")
    bos = g.int("bos_token_id", f.int("bos_token_id"))
    eos = g.ids("eos_token_id") or f.ids("eos_token_id")
    pad = f.int("pad_token_id")
    try:
        if kind == "gpt2":
            act = f.get("activation_function", (str,), "gelu_new")
            check(act in GPT2_ACTIVATIONS, ConfigError, f"{source}: activation_function {act!r} is not supported")
            check(
                not f.get("scale_attn_by_inverse_layer_idx", (bool,), False),
                ConfigError,
                f"{source}: scale_attn_by_inverse_layer_idx=true is not supported",
            )
            check(
                f.get("scale_attn_weights", (bool,), True),
                ConfigError,
                f"{source}: scale_attn_weights=false is not supported",
            )
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
        acts = ACTIVATIONS.get(kind, {"silu": "silu"})
        act = f.get("hidden_activation", (str,)) or f.get("hidden_act", (str,), next(iter(acts)))
        check(act in acts, ConfigError, f"{source}: hidden activation {act!r} is not supported ({sorted(acts)})")
        check(
            not f.get("use_bidirectional_attention", (bool,), False),
            ConfigError,
            f"{source}: use_bidirectional_attention=true is not supported",
        )
        gemma, gemma2 = kind in ("gemma", "gemma2"), kind == "gemma2"
        max_len = f.int("max_position_embeddings", 2048)
        window, layer_types = _sliding_layers(f, kind)
        n_heads = f.int("num_attention_heads", required=True)
        d = f.int("hidden_size", required=True)
        eos = eos or (2,)
        theta, scaling = _rope(f)
        qwen = kind in ("qwen2", "qwen3")
        return ModelConfig(
            vocab_size=f.int("vocab_size", required=True),
            d_model=d,
            n_layers=f.int("num_hidden_layers", required=True),
            n_heads=n_heads,
            n_kv_heads=f.int("num_key_value_heads") or n_heads,
            head_dim=f.int("head_dim") or (d // n_heads if n_heads > 0 else 0),
            mlp_dim=f.int("intermediate_size", required=True),
            max_seq_len=max_len,
            norm="rmsnorm",
            norm_eps=f.float("rms_norm_eps", 1e-6),
            position="rope",
            rope_theta=theta,
            rope_scaling=scaling,
            mlp="swiglu",  # gated: act(gate) * up, GeGLU with Gemma's tanh GELU
            activation=acts[act],
            tie_embeddings=f.get("tie_word_embeddings", (bool,), gemma),
            attn_bias=f.get("attention_bias", (bool,), False),
            qkv_bias=kind == "qwen2",  # Qwen 2 has biases on q, k and v, none on the output projection
            qk_norm=kind == "qwen3",  # Qwen 3 normalizes each query and key head
            norm_offset=1.0 if gemma else 0.0,
            embed_scale=gemma,
            post_norms=gemma2,
            attn_scalar=float(f.float("query_pre_attn_scalar", 0.0)) if gemma2 else 0.0,
            attn_softcap=f.float("attn_logit_softcapping", 0.0) if gemma2 else 0.0,
            final_softcap=f.float("final_logit_softcapping", 0.0) if gemma2 else 0.0,
            sliding_window=window,
            layer_types=layer_types,
            mlp_bias=f.get("mlp_bias", (bool,), False),
            bos_id=-1 if bos is None else bos,
            eos_ids=eos,
            pad_id=pad if pad is not None and pad >= 0 else eos[0],
            add_bos=bos is not None and not qwen,  # Qwen's tokenizers prepend nothing
        )
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


class _WeightFiles:
    """The tensors of `model.safetensors` or of the shards an index names, memory-mapped, by name."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        single = directory / "model.safetensors"
        if index.is_file():
            weight_map = read_json_object(index).get("weight_map")
            check(
                isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values()),
                CheckpointError,
                f"{index}: not a valid safetensors index (weight_map must be an object of file names)",
            )
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                check(
                    shard and Path(shard).name == shard and shard not in (".", ".."),
                    CheckpointError,
                    f"{index}: shard name {shard!r} is not a plain file name in the model directory",
                )
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
    generation = read_json_object(gen_path) if gen_path.is_file() else None
    config = config_from_hf(raw, generation, str(directory / "config.json")).replace(dtype=dtype or "float32")
    files = _WeightFiles(directory)
    present = _strip_prefix(files.names(), raw["model_type"])
    mapping = (
        llama_mapping(config, fused=raw["model_type"] == "phi3") if config.position == "rope" else gpt2_mapping(config)
    )
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
            safetensors_io.is_float(array.dtype),
            CheckpointError,
            f"{directory}: weight {hf_name!r} is stored as {array.dtype}; weights must be floating point",
        )
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
    tokenizer = load_tokenizer(directory, config, exact=False)
    return Generator(config, unflatten(flat), tokenizer, mesh)
