"""`ModelConfig`: one frozen dataclass of architecture features for every decoder family, with presets.

Fields name features, not families: the norm and its offset, the position scheme and rope scaling, the MLP and its
activation, biases per projection, query/key norms, soft-caps, per-layer attention (global or a sliding window),
experts. A family (GPT-2, Llama, Mistral, Mixtral, Qwen, Gemma, Phi-3) is a mapping onto them, in
`checkpoints/hf/config.py`. Every field that changes the computation is here, so a config plus a params dict is
the whole model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gpt_jax.errors import ConfigError, check
from gpt_jax.model.rope import RopeScaling

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu")
ACTIVATIONS = ("gelu_tanh", "gelu", "silu", "relu")
DTYPES = ("float32", "bfloat16", "float16")
# Upper bounds on sizes: far above any released model, low enough that a damaged config fails here, not later.
LIMITS = {
    "vocab_size": 2**22,
    "d_model": 2**16,
    "n_layers": 1024,
    "n_heads": 1024,
    "mlp_dim": 2**20,
    "max_seq_len": 2**21,
    "head_dim": 2**12,
    "n_kv_heads": 1024,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    mlp_dim: int
    max_seq_len: int
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head attention)
    head_dim: int = 0  # 0: d_model // n_heads
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    position: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()  # context extension of the rotary frequencies (rope.py)
    local_rope_theta: float = 0.0  # sliding layers' own rotary base, with local_rope_scaling (Gemma 3); 0: none
    local_rope_scaling: RopeScaling = RopeScaling()
    rotary_dim: int = 0  # rotate the first rotary_dim dims of each head, pass the rest (Phi-3's partial factor); 0: H
    mlp: str = "swiglu"
    activation: str = "silu"
    tie_embeddings: bool = False
    attn_bias: bool = False  # biases on the q, k, v and output projections (GPT-2)
    qkv_bias: bool = False  # biases on the q, k, v projections only (Qwen 2)
    qk_norm: bool = False  # RMSNorm of each query and key head before the rotation (Qwen 3)
    norm_offset: float = 0.0  # RMSNorm multiplies by (norm_offset + scale): 1 for Gemma
    embed_scale: bool = False  # embeddings multiplied by sqrt(d_model), in the model's dtype (Gemma)
    post_norms: bool = False  # a norm after attention and after the MLP too, before each residual add (Gemma 2)
    attn_scalar: float = 0.0  # queries scaled by attn_scalar ** -0.5 (Gemma 2's query_pre_attn_scalar); 0: head_dim
    attn_softcap: float = 0.0  # attention scores -> cap * tanh(scores / cap); 0: off (Gemma 2)
    final_softcap: float = 0.0  # logits -> cap * tanh(logits / cap); 0: off (Gemma 2)
    sliding_window: int = 0  # W: a sliding layer attends to the last W positions only; 0: no window
    layer_types: tuple[str, ...] = ()  # "full" or "sliding" per layer; empty: every layer sliding when W > 0
    mlp_bias: bool = False
    n_experts: int = 0  # E: a sparse mixture of experts replaces each MLP (Mixtral); 0: dense MLP
    experts_per_token: int = 0  # k: each token runs through its k most probable experts
    bos_id: int = 1  # -1: none
    eos_ids: tuple[int, ...] = (2,)
    pad_id: int = 0
    add_bos: bool = True
    dtype: str = "float32"

    def _check_sizes(self, names) -> None:
        for name in names:
            value = getattr(self, name)
            ok = isinstance(value, int) and not isinstance(value, bool)
            check(ok and value >= 1, ConfigError, f"{name} must be an integer >= 1, got {value!r}")
            check(value <= LIMITS[name], ConfigError, f"{name} must be at most {LIMITS[name]}, got {value!r}")

    def __post_init__(self):
        self._check_sizes(("vocab_size", "d_model", "n_layers", "n_heads", "mlp_dim", "max_seq_len"))
        if not self.n_kv_heads:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if not self.head_dim and self.n_heads > 0 and self.d_model % self.n_heads == 0:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        object.__setattr__(self, "eos_ids", tuple(int(e) for e in self.eos_ids))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    def validate(self) -> None:
        self._check_sizes(("vocab_size", "d_model", "n_layers", "n_heads", "mlp_dim", "max_seq_len", "n_kv_heads"))
        check(
            self.d_model % self.n_heads == 0 or self.head_dim > 0,
            ConfigError,
            f"n_heads={self.n_heads} must divide d_model={self.d_model} (or give head_dim explicitly)",
        )
        self._check_sizes(("head_dim",))
        check(
            self.n_kv_heads >= 1 and self.n_heads % self.n_kv_heads == 0,
            ConfigError,
            f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}",
        )
        check(
            self.position != "rope" or self.head_dim % 2 == 0,
            ConfigError,
            f"rotary positions need an even head_dim, got {self.head_dim}",
        )
        for name, allowed in (
            ("norm", NORMS),
            ("position", POSITIONS),
            ("mlp", MLPS),
            ("activation", ACTIVATIONS),
            ("dtype", DTYPES),
        ):
            check(
                getattr(self, name) in allowed,
                ConfigError,
                f"{name} must be one of {allowed}, got {getattr(self, name)!r}",
            )
        _check_numbers(self)
        _check_experts_and_rotary(self)
        _check_ids_and_layers(self)

    def rope_for(self, layer: int) -> tuple[float, RopeScaling]:
        """(theta, scaling) of `layer`'s rotary embedding: Gemma 3's sliding layers have their own."""
        if self.local_rope_theta and self.is_sliding(layer):
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends to the last `sliding_window` positions only."""
        if self.sliding_window == 0:
            return False
        return not self.layer_types or self.layer_types[layer] == "sliding"

    @property
    def num_params(self) -> int:
        """Parameter count (tied head counted once)."""
        d, f, v, h = self.d_model, self.mlp_dim, self.vocab_size, self.head_dim
        attn = d * h * (self.n_heads * 2 + self.n_kv_heads * 2)
        if self.attn_bias or self.qkv_bias:
            attn += h * (self.n_heads + 2 * self.n_kv_heads)
        if self.attn_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * h
        mlp = d * f * (3 if self.mlp == "swiglu" else 2) * max(self.n_experts, 1) + d * self.n_experts
        if self.mlp_bias:
            mlp += f * (2 if self.mlp == "swiglu" else 1) + d
        norm = d * (2 if self.norm == "layernorm" else 1)
        total = self.n_layers * (attn + mlp + (4 if self.post_norms else 2) * norm) + norm + v * d
        if not self.tie_embeddings:
            total += v * d
        if self.position == "learned":
            total += self.max_seq_len * d
        return total

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes`; kv heads and head dim follow n_heads/d_model unless set explicitly here or before."""
        if "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads:
            changes["n_kv_heads"] = 0
        if "head_dim" not in changes and self.head_dim * self.n_heads == self.d_model:
            changes["head_dim"] = 0
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["eos_ids"] = list(self.eos_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config", base: ModelConfig | None = None) -> ModelConfig:
        """Build from a dict (or update `base` with it), rejecting unknown keys and wrong types with the file named."""
        check(isinstance(data, dict), ConfigError, f"{source}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        check(not unknown, ConfigError, f"{source}: unknown config keys {unknown}; allowed: {sorted(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data and base is None]
        check(not missing, ConfigError, f"{source}: missing config keys {missing}")
        kwargs = {}
        for name, value in data.items():
            default = fields[name].default
            expected = type(default) if default is not dataclasses.MISSING else int
            if name in ("rope_scaling", "local_rope_scaling"):
                check(isinstance(value, dict), ConfigError, f"{source}: {name} must be an object, got {value!r}")
                known = {f.name for f in dataclasses.fields(RopeScaling)}
                check(
                    set(value) <= known,
                    ConfigError,
                    f"{source}: unknown {name} keys {sorted(set(value) - known)}; allowed: {sorted(known)}",
                )
                value = RopeScaling(**value)
            elif name == "layer_types":
                check(
                    isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
                    ConfigError,
                    f"{source}: layer_types must be a list of strings, got {value!r}",
                )
                value = tuple(value)
            elif name == "eos_ids":
                check(
                    isinstance(value, (list, tuple)) and all(type(v) is int for v in value),
                    ConfigError,
                    f"{source}: eos_ids must be a list of integers, got {value!r}",
                )
                value = tuple(value)
            elif expected is float:
                check(type(value) in (int, float), ConfigError, f"{source}: {name} must be a number, got {value!r}")
                value = float(value)
            else:
                check(
                    type(value) is expected,
                    ConfigError,
                    f"{source}: {name} must be of type {expected.__name__}, got {value!r}",
                )
            kwargs[name] = value
        try:
            return base.replace(**kwargs) if base is not None else cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _check_numbers(self: ModelConfig) -> None:
    """The float features: finite and in range."""
    for name in ("norm_offset", "attn_scalar", "attn_softcap", "final_softcap"):
        value = getattr(self, name)
        check(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0,
            ConfigError,
            f"{name} must be a finite number >= 0 (0: off), got {value!r}",
        )
    for name in ("norm_eps", "rope_theta"):
        value = getattr(self, name)
        check(
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            ConfigError,
            f"{name} must be a finite number > 0, got {value!r}",
        )


def _check_ids_and_layers(self: ModelConfig) -> None:
    """Special token ids within the vocabulary; the per-layer attention types and window."""
    for name in ("bos_id", "pad_id"):
        value = getattr(self, name)
        check(
            -1 <= value < self.vocab_size,
            ConfigError,
            f"{name} must be in [-1, vocab_size={self.vocab_size}), got {value}",
        )
    check(self.pad_id >= 0, ConfigError, f"pad_id must be a token id >= 0, got {self.pad_id}")
    check(
        isinstance(self.sliding_window, int) and 0 <= self.sliding_window <= LIMITS["max_seq_len"],
        ConfigError,
        f"sliding_window must be an integer in [0, {LIMITS['max_seq_len']}] (0: none), got {self.sliding_window!r}",
    )
    check(
        self.layer_types == ()
        or (len(self.layer_types) == self.n_layers and set(self.layer_types) <= {"full", "sliding"}),
        ConfigError,
        f"layer_types must be empty or hold 'full'/'sliding' for each of the {self.n_layers} layers, "
        f"got {self.layer_types!r}",
    )
    check(
        "sliding" not in self.layer_types or self.sliding_window > 0,
        ConfigError,
        "sliding layers need sliding_window > 0",
    )
    for e in self.eos_ids:
        check(
            0 <= e < self.vocab_size,
            ConfigError,
            f"eos_ids must hold ids in [0, vocab_size={self.vocab_size}), got {e}",
        )


def _check_experts_and_rotary(self: ModelConfig) -> None:
    """The mixture-of-experts and rotary fields (Mixtral, Phi-3, Gemma 3) of a config."""
    for name in ("n_experts", "experts_per_token", "rotary_dim"):
        value = getattr(self, name)
        check(
            type(value) is int and 0 <= value <= 4096,
            ConfigError,
            f"{name} must be an integer in [0, 4096] (0: off), got {value!r}",
        )
    check(
        (self.n_experts == 0) == (self.experts_per_token == 0) and self.experts_per_token <= self.n_experts,
        ConfigError,
        f"experts_per_token={self.experts_per_token} must be in [1, n_experts={self.n_experts}] with experts, "
        "and 0 without",
    )
    check(
        self.rotary_dim % 2 == 0 and self.rotary_dim <= self.head_dim,
        ConfigError,
        f"rotary_dim must be even and at most head_dim={self.head_dim} (0: all of it), got {self.rotary_dim}",
    )
    check(
        not self.n_experts or (self.mlp == "swiglu" and not self.mlp_bias),
        ConfigError,
        "experts are gated MLPs without biases (mlp='swiglu', mlp_bias=False)",
    )
    theta = self.local_rope_theta
    check(
        isinstance(theta, (int, float)) and not isinstance(theta, bool) and math.isfinite(theta) and theta >= 0,
        ConfigError,
        f"local_rope_theta must be a finite number >= 0 (0: sliding layers use rope_theta), got {theta!r}",
    )
