"""Rotary positions and sliding windows as each family's `config.json` states them, in both forms transformers has
written: before 5.x `rope_theta` + `rope_scaling` (and Gemma 3's `rope_local_base_freq`, `sliding_window_pattern`),
from 5.x `rope_parameters` (per layer type for Gemma 3) and `layer_types`."""

from __future__ import annotations

from gpt_jax.checkpoints.hf.fields import Fields
from gpt_jax.errors import ConfigError, check
from gpt_jax.model.rope import RopeScaling

ROPE_KEYS = {  # the rope-parameter keys each type reads; any other key that changes the math is refused by name
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor", "original_max_position_embeddings"},  # the latter unread, as in transformers
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "truncate"},
}
ROPE_IGNORED = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}  # the last is read by rotary_dim
PER_LAYER_TYPE = {"full_attention", "sliding_attention"}  # Gemma 3's rope_parameters keys in transformers 5


def _rope(f: Fields, rope: dict, default_theta: float, label: str = "rope parameters") -> tuple[float, RopeScaling]:
    """(theta, scaling) from one rope dict (`rope_parameters`, or `rope_scaling` beside `rope_theta`)."""
    r = Fields(rope, f"{f.source} ({label})")
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


def ropes(f: Fields, kind: str) -> tuple[float, RopeScaling, float, RopeScaling]:
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
        full = Fields(params, f.source).get("full_attention", (dict,), {})
        local = Fields(params, f.source).get("sliding_attention", (dict,), {})
        return (
            *_rope(f, full, 1_000_000.0, "rope_parameters.full_attention"),
            *_rope(f, local, 10_000.0, "rope_parameters.sliding_attention"),
        )
    global_rope = _rope(f, params or f.get("rope_scaling", (dict,)) or {}, f.float("rope_theta", 1_000_000.0))
    return (*global_rope, f.float("rope_local_base_freq", 10_000.0), RopeScaling())


def rotary_dim(f: Fields, kind: str, head_dim: int) -> int:
    """Phi-3 rotates the first head_dim * partial_rotary_factor dims of each head (0: all); other families' code
    rotates whole heads, so a factor below 1 there is refused."""
    rope = f.get("rope_parameters", (dict,)) or {}
    factor = Fields(rope, f.source).float("partial_rotary_factor", f.float("partial_rotary_factor", 1.0))
    if factor == 1.0:
        return 0
    check(
        kind == "phi3" and 0 < factor < 1,
        ConfigError,
        f"{f.source}: partial_rotary_factor={factor} is supported for phi3 only, in (0, 1]",
    )
    return int(head_dim * factor)


LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def sliding_layers(f: Fields, kind: str) -> tuple[int, tuple[str, ...]]:
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
