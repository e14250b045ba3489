"""Hugging Face `config.json` (and `generation_config.json`) -> `ModelConfig`, for every supported family.

Every field that changes the computation is mapped, or refused with a typed error that names it. Checkpoints carry
the fields of the transformers version that saved them, so both forms are read: before 5.x, `rope_theta` +
`rope_scaling` (and Gemma 3's `rope_local_base_freq`, `sliding_window_pattern`); from 5.x, `rope_parameters` (per
layer type for Gemma 3) and `layer_types`.
"""

from __future__ import annotations

from gpt_jax.config import ModelConfig
from gpt_jax.errors import CheckpointError, ConfigError, check
from gpt_jax.rope import RopeScaling

SUPPORTED = ("gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
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
    "dynamic": {"factor", "original_max_position_embeddings"},  # the latter unread, as in transformers
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "truncate"},
}
ROPE_IGNORED = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}  # the last is read by _rotary_dim
PER_LAYER_TYPE = {"full_attention", "sliding_attention"}  # Gemma 3's rope_parameters keys in transformers 5


def _rope(f: _Fields, rope: dict, default_theta: float, label: str = "rope parameters") -> tuple[float, RopeScaling]:
    """(theta, scaling) from one rope dict (`rope_parameters`, or `rope_scaling` beside `rope_theta`)."""
    r = _Fields(rope, f"{f.source} ({label})")
    kind = r.get("rope_type", (str,)) or r.get("type", (str,), "default")
    check(
        kind in ROPE_KEYS,
        ConfigError,
        f"{f.source}: rope scaling type {kind!r} is not supported (supported: {sorted(ROPE_KEYS)})",
    )
    unknown = sorted(set(rope) - ROPE_KEYS[kind] - ROPE_IGNORED)
    check(not unknown, ConfigError, f"{f.source}: {label} {unknown} are not supported for type {kind!r}")
    theta = r.float("rope_theta", 0.0) or default_theta
    if kind == "default":
        return theta, RopeScaling()
    defaults, context = RopeScaling(), f.int("max_position_embeddings", 2048)
    return theta, RopeScaling(
        type=kind,
        factor=r.float("factor", 1.0),
        original_context=context if kind == "dynamic" else r.int("original_max_position_embeddings", context),
        low_freq_factor=r.float("low_freq_factor", defaults.low_freq_factor),
        high_freq_factor=r.float("high_freq_factor", defaults.high_freq_factor),
        beta_fast=r.float("beta_fast", defaults.beta_fast),
        beta_slow=r.float("beta_slow", defaults.beta_slow),
        attention_factor=r.float("attention_factor", 0.0),
        truncate=r.get("truncate", (bool,), True),
    )


def _ropes(f: _Fields, kind: str) -> tuple[float, RopeScaling, float, RopeScaling]:
    """(theta, scaling) of the full-attention layers, then of Gemma 3's sliding layers (0, default: the same)."""
    params = f.get("rope_parameters", (dict,))
    if kind != "gemma3_text":
        return (
            *_rope(f, params or f.get("rope_scaling", (dict,)) or {}, f.float("rope_theta", 10000.0)),
            0.0,
            RopeScaling(),
        )
    if params and set(params) & PER_LAYER_TYPE:
        unknown = sorted(set(params) - PER_LAYER_TYPE)
        check(not unknown, ConfigError, f"{f.source}: rope_parameters for layer types {unknown} are not supported")
        full = _Fields(params, f.source).get("full_attention", (dict,), {})
        local = _Fields(params, f.source).get("sliding_attention", (dict,), {})
        return (
            *_rope(f, full, 1_000_000.0, "rope_parameters.full_attention"),
            *_rope(f, local, 10_000.0, "rope_parameters.sliding_attention"),
        )
    global_rope = _rope(f, params or f.get("rope_scaling", (dict,)) or {}, f.float("rope_theta", 1_000_000.0))
    return (*global_rope, f.float("rope_local_base_freq", 10_000.0), RopeScaling())


def _rotary_dim(f: _Fields, kind: str, head_dim: int) -> int:
    """Phi-3 rotates the first head_dim * partial_rotary_factor dims of each head (0: all); other families' code
    rotates whole heads, so a factor below 1 there is refused."""
    rope = f.get("rope_parameters", (dict,)) or {}
    factor = _Fields(rope, f.source).float("partial_rotary_factor", f.float("partial_rotary_factor", 1.0))
    if factor == 1.0:
        return 0
    check(
        kind == "phi3" and 0 < factor < 1,
        ConfigError,
        f"{f.source}: partial_rotary_factor={factor} is supported for phi3 only, in (0, 1]",
    )
    return int(head_dim * factor)


LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _sliding_layers(f: _Fields, kind: str) -> tuple[int, tuple[str, ...]]:
    """(window, per-layer types). Mistral: every layer sliding when `sliding_window` is set. Qwen 2/3: only with
    `use_sliding_window`, from `layer_types` (transformers 5) or layers from `max_window_layers` on. Gemma 2: from
    `layer_types`, or every other layer from the first. Gemma 3: from `layer_types`, or every layer but each
    `sliding_window_pattern`-th."""
    if kind in ("llama", "gemma"):
        return 0, ()
    if kind in ("mistral", "mixtral", "phi3"):
        return f.int("sliding_window") or 0, ()
    if kind in ("qwen2", "qwen3") and not f.get("use_sliding_window", (bool,), False):
        return 0, ()
    window, n = f.int("sliding_window", required=True), f.int("num_hidden_layers", required=True)
    names = f.get("layer_types", (list,))
    if names is None and kind == "gemma2":  # layers 0, 2, 4, ... slide
        return window, tuple("sliding" if i % 2 == 0 else "full" for i in range(n))
    if names is None and kind == "gemma3_text":  # every pattern-th layer is global
        pattern = f.int("sliding_window_pattern") or f.int("_sliding_window_pattern", 6)
        check(pattern >= 1, ConfigError, f"{f.source}: sliding_window_pattern must be >= 1, got {pattern}")
        return window, tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(n))
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
        gemma, gemma2 = kind.startswith("gemma"), kind in ("gemma2", "gemma3_text")  # gemma2: Gemma 2 and 3 layers
        max_len = f.int("max_position_embeddings", 2048)
        window, layer_types = _sliding_layers(f, kind)
        n_heads = f.int("num_attention_heads", required=True)
        d = f.int("hidden_size", required=True)
        eos = eos or (2,)
        theta, scaling, local_theta, local_scaling = _ropes(f, kind)
        head_dim = f.int("head_dim") or (d // n_heads if n_heads > 0 else 0)
        moe = kind == "mixtral"
        qwen = kind in ("qwen2", "qwen3")
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
            rotary_dim=_rotary_dim(f, kind, head_dim),
            mlp="swiglu",  # gated: act(gate) * up, GeGLU with Gemma's tanh GELU
            activation=acts[act],
            tie_embeddings=f.get("tie_word_embeddings", (bool,), gemma),
            attn_bias=f.get("attention_bias", (bool,), False),
            qkv_bias=kind == "qwen2",  # Qwen 2 has biases on q, k and v, none on the output projection
            qk_norm=kind in ("qwen3", "gemma3_text"),  # each query and key head normalized
            norm_offset=1.0 if gemma else 0.0,
            embed_scale=gemma,
            post_norms=gemma2,
            attn_scalar=f.float("query_pre_attn_scalar", 256.0) if gemma2 else 0.0,
            attn_softcap=f.float("attn_logit_softcapping", 0.0) if gemma2 else 0.0,
            final_softcap=f.float("final_logit_softcapping", 0.0) if gemma2 else 0.0,
            sliding_window=window,
            layer_types=layer_types,
            mlp_bias=f.get("mlp_bias", (bool,), False),
            n_experts=f.int("num_local_experts", required=True) if moe else 0,
            experts_per_token=f.int("num_experts_per_tok", required=True) if moe else 0,
            bos_id=-1 if bos is None else bos,
            eos_ids=eos,
            pad_id=pad if pad is not None and pad >= 0 else eos[0],
            add_bos=bos is not None and not qwen,  # Qwen's tokenizers prepend nothing
        )
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def generation_defaults(generation: dict | None, source: str = "generation_config.json") -> dict:
    """The sampling settings a generation_config.json asks for, as transformers reads them: with do_sample true,
    its temperature, top_p and top_k (transformers' own defaults 1.0, 1.0 and 50 where it names none) and min_p;
    with do_sample false, greedy decoding; a repetition_penalty either way. A file that does not mention do_sample
    (most base models' list only token ids) leaves this project's defaults in place."""
    g = _Fields(generation or {}, source)
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
