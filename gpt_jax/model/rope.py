"""Rotary position embeddings: the inverse frequencies of each pair of head dimensions, with the context-extension
schemes checkpoints use (Hugging Face's `rope_type`):

- "default": theta ** (-2i / H).
- "linear": every frequency divided by `factor` (positions interpolated).
- "llama3" (Llama 3.1-3.3): long wavelengths (beyond original_context / low_freq_factor) divided by `factor`, short
  ones (below original_context / high_freq_factor) kept, the band between blended smoothly.
- "dynamic" (NTK-aware): beyond the original context L0, the base grows with the sequence length L so that the
  lowest frequency still turns as it did at L0: theta * (factor * L / L0 - (factor - 1)) ** (H / (H - 2)). L is the
  row's own length (its largest position + 1) at each forward pass, as transformers computes it for one sequence;
  unlike transformers, a longer batch-mate never changes a row's frequencies.
- "yarn": per-frequency blend of interpolation (divided by `factor`) and extrapolation, ramping between the
  dimensions that turn beta_fast and beta_slow times over the original context; cos and sin are then scaled by
  `attention_factor` (default 0.1 ln(factor) + 1).

The frequencies are computed once per config on the host (numpy, float32 like the references) and enter the model
as constants, except dynamic ones, which follow each row's length. Axes: B batch, T query length, H rotated dims.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.errors import ConfigError, check

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are rescaled for a longer context (fields unused by a type keep their defaults)."""

    type: str = "default"
    factor: float = 1.0
    original_context: int = 0  # the pre-training context (dynamic, llama3, yarn)
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float = 0.0  # yarn; 0: 0.1 ln(factor) + 1
    truncate: bool = True  # yarn: round the ramp's ends to whole dimensions

    def __post_init__(self):
        check(self.type in ROPE_TYPES, ConfigError, f"rope scaling type must be one of {ROPE_TYPES}, got {self.type!r}")
        for name in ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            check(ok and value >= 0, ConfigError, f"rope scaling {name} must be a finite number >= 0, got {value!r}")
        check(
            isinstance(self.truncate, bool), ConfigError, f"rope scaling truncate must be a bool, got {self.truncate!r}"
        )
        check(self.factor > 0, ConfigError, f"rope scaling factor must be > 0, got {self.factor}")
        needs_context = self.type in ("dynamic", "llama3", "yarn")
        check(
            isinstance(self.original_context, int) and (self.original_context > 0 or not needs_context),
            ConfigError,
            f"rope scaling type {self.type!r} needs original_context > 0, got {self.original_context!r}",
        )
        check(
            self.type != "llama3" or self.high_freq_factor > self.low_freq_factor > 0,
            ConfigError,
            "llama3 rope scaling needs high_freq_factor > low_freq_factor > 0",
        )


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> tuple[np.ndarray, float]:
    """[H/2] float32 inverse frequencies, and the factor cos and sin are multiplied by."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    base = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    s = scaling
    if s.type in ("default", "dynamic"):  # dynamic: these up to the original context, then dynamic_frequencies
        return base, 1.0
    if s.type == "linear":
        return (base / np.float32(s.factor)).astype(np.float32), 1.0
    if s.type == "llama3":
        low_wavelen = s.original_context / s.low_freq_factor
        high_wavelen = s.original_context / s.high_freq_factor
        wavelen = 2 * math.pi / base
        scaled = np.where(wavelen > low_wavelen, base / s.factor, base)
        smooth = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        blended = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, blended, scaled).astype(np.float32), 1.0
    return _yarn(head_dim, theta, s, base)


def _yarn(head_dim: int, theta: float, s: RopeScaling, extrapolation: np.ndarray) -> tuple[np.ndarray, float]:
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(s.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)  # 1: extrapolate (high frequencies), 0: interpolate
    interpolation = extrapolation / np.float32(s.factor)
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    attention = s.attention_factor or (0.1 * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0)
    return inv_freq.astype(np.float32), float(attention)


def dynamic_frequencies(head_dim: int, theta: float, s: RopeScaling, positions: jax.Array) -> jax.Array:
    """NTK-aware inverse frequencies of each row at its current length: positions [B, T] -> [B, 1, H/2]."""
    length = jnp.maximum(jnp.max(positions, axis=1) + 1, s.original_context).astype(jnp.float32)  # [B]
    growth = (s.factor * length / s.original_context - (s.factor - 1)) ** (head_dim / (head_dim - 2))
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / ((jnp.float32(theta) * growth)[:, None, None] ** exponents)
