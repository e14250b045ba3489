"""The pieces of a decoder block, as Flax linen modules used purely (no mutable collections).

Axes: B batch, T query length, S key length (cache slots), D model width, N query heads, K kv heads,
G query heads per kv head (N = K * G), H head dim, F MLP width, V vocabulary.
Parameter names follow Hugging Face's closely enough that checkpoint conversion is a rename plus a reshape.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax.errors import ConfigError
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.kv_cache import cache_layout
from gpt_jax.model.numerics import MASK_VALUE
from gpt_jax.model.quantize import Int8Kernel, contract
from gpt_jax.model.rope import dynamic_frequencies, inverse_frequencies
from gpt_jax.model.kernels import cpu_products
from gpt_jax.model.row_invariant import (
    ForwardMode,
    element_order_softmax,
    key_blocks,
    last_axis_mean,
    softmax,
    tiled,
)

init_weight = nn.initializers.normal(0.02)
# Logical axis names of the weights: sharding maps them onto mesh axes (sharding.RULES).
VOCAB, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP_WIDTH, POSITION, EXPERT = (
    "vocab",
    "embed",
    "heads",
    "kv_heads",
    "head_dim",
    "mlp",
    "position",
    "expert",
)


class WeightInfo(flax.struct.PyTreeNode, nn.meta.AxisMetadata):
    """A weight as `init` creates it: the array, the logical name of each of its axes, and how many of its leading
    axes the activations contract (0: not a projection kernel). The one table of weights that sharding and int8
    quantization read (`model.weight_infos`); the params a model applies with are plain arrays."""

    value: Any
    axes: tuple[str, ...] = flax.struct.field(pytree_node=False)
    inputs: int = flax.struct.field(pytree_node=False, default=0)

    def unbox(self):
        return self.value

    def replace_boxed(self, val):
        return self.replace(value=val)

    def add_axis(self, index, params):
        return self

    def remove_axis(self, index, params):
        return self


def weight(module: nn.Module, name: str, init, shape: tuple[int, ...], dtype, axes: tuple[str, ...], inputs=0):
    """`module.param(name, init, shape, dtype)` declared with its logical `axes` (and, for a projection kernel, the
    number of leading axes the activations contract), minus flax's abstract evaluation of `init` when the parameter
    exists: that traced a random initializer for every weight on every trace (a sizeable part of the first trace;
    see docs/BENCHMARKS.md). The stored shape is still checked."""
    if not module.has_variable("params", name):
        boxed = lambda key, shape, dtype: WeightInfo(init(key, shape, dtype), axes, inputs)
        return module.param(name, boxed, shape, dtype)
    value = module.get_variable("params", name)
    if tuple(value.shape) != tuple(shape):
        path = "/".join((*module.path, name))
        raise ConfigError(f"parameter {path} has shape {tuple(value.shape)}, the config needs {shape}")
    return value


def activation(name: str):
    return {
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "silu": jax.nn.silu,
        "relu": jax.nn.relu,
    }[name]


class Norm(nn.Module):
    """LayerNorm (scale and bias) or RMSNorm (scale) over the model width, computed in fp32; with `per_head`, an
    RMSNorm over each head's H values (query/key norms)."""

    config: ModelConfig
    per_head: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mode: ForwardMode) -> jax.Array:  # [B, T, D] or [B, T, N, H], the same out
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        invariant = mode.fixed_order
        size, axis = (cfg.head_dim, HEAD_DIM) if self.per_head else (cfg.d_model, EMBED)
        scale = weight(self, "scale", nn.initializers.ones, (size,), dtype, (axis,))
        x32 = x.astype(jnp.float32)
        if cfg.norm == "layernorm" and not self.per_head:
            bias = weight(self, "bias", nn.initializers.zeros, (cfg.d_model,), dtype, (EMBED,))
            mean = last_axis_mean(x32, invariant)
            var = last_axis_mean(jnp.square(x32 - mean), invariant)
            y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        else:
            y = x32 * jax.lax.rsqrt(last_axis_mean(jnp.square(x32), invariant) + cfg.norm_eps)
            scale = scale.astype(jnp.float32)
            y = y * (scale + cfg.norm_offset if cfg.norm_offset else scale)  # Gemma: 1 + w
        return y.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, config: ModelConfig, layer: int) -> jax.Array:
    """Rotary embedding of `layer` in the half-split layout Hugging Face uses, over the first `rotary_dim` dims of
    each head (the rest pass as they are). x: [B, T, N, H], positions: [B, T]."""
    theta, scaling = config.rope_for(layer)
    r = config.rotary_dim or x.shape[-1]
    inv_freq, scale = inverse_frequencies(r, theta, scaling)  # [R/2], host
    if scaling.type == "dynamic":
        inv_freq = dynamic_frequencies(r, theta, scaling, positions)  # [B, 1, R/2]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, R/2]
    cos = (jnp.cos(angles) * scale)[:, :, None, :]
    sin = (jnp.sin(angles) * scale)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32[..., :r], 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x32[..., r:]], axis=-1)
    return out.astype(x.dtype)


def _merge_heads(w):
    """[N, H, D] -> [N*H, D] (a free reshape), also for an int8 kernel."""
    if isinstance(w, Int8Kernel):
        return w.replace(q=w.q.reshape(-1, w.q.shape[-1]), in_axes=1)
    return w.reshape(-1, w.shape[-1])


class Attention(nn.Module):
    """Grouped-query self-attention over the KV cache (or over the sequence itself when no cache is given)."""

    config: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, mask, cache, mode: ForwardMode):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        invariant, exact = mode.row_invariant, mode.fixed_order
        n, k, h, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
        out_init = nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layers))

        def proj(name, heads, heads_axis):
            w = weight(self, f"{name}_kernel", init_weight, (d, heads, h), dtype, (EMBED, heads_axis, HEAD_DIM), 1)
            y = contract("BTD,DNH->BTNH", x, w, invariant=invariant, kernel=exact)
            if cfg.attn_bias or cfg.qkv_bias:
                y = y + weight(self, f"{name}_bias", nn.initializers.zeros, (heads, h), dtype, (heads_axis, HEAD_DIM))
            if cfg.qk_norm and name != "v":
                y = Norm(cfg, per_head=True, name=f"{name}_norm")(y, mode)
            return y

        q, key, value = proj("q", n, HEADS), proj("k", k, KV_HEADS), proj("v", k, KV_HEADS)  # [B, T, N|K, H]
        if cfg.position == "rope":
            q, key = rope(q, positions, cfg, self.layer), rope(key, positions, cfg, self.layer)
        b, t = q.shape[:2]
        if cache is not None:
            cache, key, value = cache.write(self.layer, key, value)  # [B*K, H, S], [B*K, S, H]
        else:
            key, value = cache_layout(key, value)  # [B*K, H, T], [B*K, T, H]
        g = n // k
        q = q.reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4).reshape(b * k, g * t, h)  # [B*K, G*T, H]
        kernel = exact and cpu_products.usable(q, key) and value.dtype == jnp.float32
        seen = cache.attended if cache is not None else key.shape[2]  # S' <= S slots attended to
        if not kernel and seen < key.shape[2]:  # the kernel reads the first S' slots in place; XLA's products a copy
            key, value = key[:, :, :seen], value[:, :seen]
        tile = lambda product, x: tiled(product, x, 1) if invariant else product(x)  # queries in tiles, or whole
        product = lambda q, key: jnp.einsum("RQH,RHS->RQS", q, key, preferred_element_type=jnp.float32)
        if kernel:  # one fixed sequence per score, whatever the query count and the cache length
            scores = cpu_products.batched_row_product(q, key, seen)
        elif invariant:  # query tiles of key blocks: each product's shape is one of a few, whatever B, T and S
            scores = tiled(lambda q: key_blocks(lambda key: product(q, key), key), q, 1)
        else:
            scores = product(q, key)
        scores = softcap(scores / math.sqrt(cfg.attn_scalar or h), cfg.attn_softcap)
        scores = scores.reshape(b, k, g, t, -1)  # [B, K, G, T, S]
        scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
        if kernel:
            probs = element_order_softmax(scores)
        else:
            probs = softmax(scores) if invariant else jax.nn.softmax(scores, axis=-1)
        probs = probs.astype(value.dtype).reshape(b * k, g * t, -1)
        if kernel:  # trailing slots' zero probabilities add exact zeros to the fixed sequence over the slots
            out = cpu_products.batched_row_product(probs, value).reshape(b, k, g, t, h)
        else:
            out = tile(lambda p: jnp.einsum("RQS,RSH->RQH", p, value), probs).reshape(b, k, g, t, h)
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, n * h)  # [B, T, N*H]: heads in the kernel's order
        w_o = weight(self, "o_kernel", out_init, (n, h, d), dtype, (HEADS, HEAD_DIM, EMBED), 2)
        y = contract("BTI,IO->BTO", out, _merge_heads(w_o), invariant=invariant, kernel=exact)
        if cfg.attn_bias:
            y = y + weight(self, "o_bias", nn.initializers.zeros, (d,), dtype, (EMBED,))
        return y, cache


class MLP(nn.Module):
    """GELU MLP (up, act, down) or SwiGLU (act(gate) * up, down)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, mode: ForwardMode):  # [B, T, D] -> [B, T, D]
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d, f = cfg.d_model, cfg.mlp_dim
        act = activation(cfg.activation)

        def dense(name, inputs, axes, init=init_weight):
            shape = tuple({EMBED: d, MLP_WIDTH: f}[a] for a in axes)
            kernel = weight(self, f"{name}_kernel", init, shape, dtype, axes, 1)
            y = contract("BTI,IO->BTO", inputs, kernel, invariant=mode.row_invariant, kernel=mode.fixed_order)
            if cfg.mlp_bias:
                y = y + weight(self, f"{name}_bias", nn.initializers.zeros, shape[1:], dtype, axes[1:])
            return y

        if cfg.mlp == "swiglu":
            hidden = act(dense("gate", x, (EMBED, MLP_WIDTH))) * dense("up", x, (EMBED, MLP_WIDTH))  # [B, T, F]
        else:
            hidden = act(dense("up", x, (EMBED, MLP_WIDTH)))
        out_init = nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layers))
        return dense("down", hidden, (MLP_WIDTH, EMBED), out_init)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(x / cap): a smooth bound on |x| (cap 0: x as it is)."""
    return cap * jnp.tanh(x / cap) if cap else x
