"""int8 weight-only quantization: each projection kernel stored as int8 with one fp32 scale per output channel.

Decoding at small batch reads every weight once per step, so halving (vs bf16) or quartering (vs fp32) the bytes
read speeds it up where the step is bandwidth-bound. Activations stay in floating point: y = (x @ q) * scale.
Embeddings and norms stay as they are (the embedding is a gather; a tied head reads it as a matrix).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Int8Kernel:
    q: jax.Array  # int8, the kernel's shape
    scale: jax.Array  # fp32, the output axes' shape (broadcast over the input axes)
    in_axes: int = flax.struct.field(pytree_node=False, default=1)  # leading axes contracted with x

    @property
    def shape(self):
        return self.q.shape

    @property
    def dtype(self):
        return self.scale.dtype


def quantize_kernel(w: jax.Array, in_axes: int) -> Int8Kernel:
    """Symmetric per-output-channel int8: scale = max|w| over the input axes / 127."""
    axes = tuple(range(in_axes))
    w32 = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w32), axis=axes) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return Int8Kernel(q=q, scale=scale, in_axes=in_axes)


def dequantize(w) -> jax.Array:
    if isinstance(w, Int8Kernel):
        return w.q.astype(jnp.float32) * w.scale
    return w


# kernels by parameter name, with how many leading axes are contracted with the activations
_KERNELS = {
    "q_kernel": 1,
    "k_kernel": 1,
    "v_kernel": 1,
    "o_kernel": 2,
    "gate_kernel": 1,
    "up_kernel": 1,
    "down_kernel": 1,
    "lm_head": 1,
}


def quantize_params(params: dict) -> dict:
    """A copy of `params` with every projection kernel (and an untied head) as `Int8Kernel`."""
    out = {}
    for name, value in params.items():
        if isinstance(value, dict):
            out[name] = quantize_params(value)
        elif name in _KERNELS:
            out[name] = quantize_kernel(value, _KERNELS[name])
        else:
            out[name] = value
    return out


def contract(spec: str, x: jax.Array, w, out_dtype=None) -> jax.Array:
    """einsum(spec, x, w) for a float kernel, or einsum(spec, x, q) * scale for an `Int8Kernel`."""
    if isinstance(w, Int8Kernel):
        y = jnp.einsum(spec, x, w.q.astype(x.dtype), preferred_element_type=out_dtype)
        return y * w.scale.astype(y.dtype)
    return jnp.einsum(spec, x, w, preferred_element_type=out_dtype)
