"""int8 quantization: each projection kernel stored as int8 with one fp32 scale per output channel.

Decoding at small batch reads every weight once per step, so quartering the bytes read (vs fp32) speeds it up
where the step is bandwidth-bound and the backend multiplies int8 directly. Two modes:

  weight-only (default): activations stay in floating point, y = (x @ float(q)) * scale.
  dynamic (activations=True): each token's activations are also quantized on the fly (symmetric, one scale per
      token), y = int32(x_q @ q) * x_scale * scale. On XLA:CPU this is the only int8 form that runs faster than
      fp32: the integer product is a native int8 kernel, while weight-only converts the kernel before the product.
      XLA:CPU multiplies a single row slowly in int8, so a lone token is paired with a zero row.
      It is row-invariant without tiles: the integer product sums exactly in int32 whatever the kernel, a token's
      scale is a maximum (exact in any order) and the rest is elementwise.

Weight-only products are tiled like float ones in a decode step or verification pass (`invariant`).

Embeddings and norms stay as they are (the embedding is a gather; a tied head reads it as a matrix).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax.model.params import map_named
from gpt_jax.model.kernels import cpu_products
from gpt_jax.model.row_invariant import at_least_two, dense_tile, rows_alike


@flax.struct.dataclass
class Int8Kernel:
    q: jax.Array  # int8, the kernel's shape
    scale: jax.Array  # fp32, the output axes' shape (broadcast over the input axes)
    in_axes: int = flax.struct.field(pytree_node=False, default=1)  # leading axes contracted with x
    activations: bool = flax.struct.field(pytree_node=False, default=False)  # quantize activations too (dynamic)

    @property
    def shape(self):
        return self.q.shape

    @property
    def dtype(self):
        return self.scale.dtype


def quantize_kernel(w: jax.Array, in_axes: int, activations: bool = False) -> Int8Kernel:
    """Symmetric per-output-channel int8: scale = max|w| over the input axes / 127."""
    axes = tuple(range(in_axes))
    w32 = w.astype(jnp.float32)
    scale = jnp.max(jnp.abs(w32), axis=axes) / 127.0
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return Int8Kernel(q=q, scale=scale, in_axes=in_axes, activations=activations)


def dequantize(w) -> jax.Array:
    if isinstance(w, Int8Kernel):
        return w.q.astype(jnp.float32) * w.scale
    return w


def quantize_params(params: dict, inputs: dict[str, int], activations: bool = False) -> dict:
    """A copy of `params` with every projection kernel as `Int8Kernel`. `inputs`: by flat name, how many leading
    axes the activations contract (0: not a kernel), from the model's table of weights (`model.weight_infos`)."""

    def convert(name, value):
        return quantize_kernel(value, inputs[name], activations) if inputs[name] else value

    return map_named(convert, params)


def _tile(x: jax.Array, w_shape: tuple, in_axes: int):
    """Rows per tile of x's product with a kernel of `w_shape` whose first `in_axes` axes are contracted, as a
    function (rows_alike measures it only where it tiles)."""
    return lambda: dense_tile(math.prod(w_shape[:in_axes]), math.prod(w_shape[in_axes:]), x.dtype)


def contract(spec: str, x: jax.Array, w, out_dtype=None, *, invariant: bool = False, kernel=None) -> jax.Array:
    """einsum(spec, x, w) for a float kernel; for an `Int8Kernel` the same product from its int8 values.
    `invariant`: a decode step's or verification pass's product, in row tiles (row_invariant.rows_alike); x is then
    [B, T, ..., I].

    `kernel` (default: `invariant`): a float32 product may come from the CPU kernel (a row-invariant pass, or a
    prefill that `ForwardMode.fixed_order` says is exact).

    x contracts its last `w.in_axes` axes with w's first ones, and the output is x's other axes then w's others.
    """
    if not isinstance(w, Int8Kernel):
        if (invariant if kernel is None else kernel) and cpu_products.usable(x, w):  # one fixed order per element: no tiles needed
            return cpu_products.row_product(x, w)
        tile = _tile(x, w.shape, 1)
        return rows_alike(lambda x: jnp.einsum(spec, x, w, preferred_element_type=out_dtype), x, invariant, tile)
    if not w.activations:
        product = lambda x: jnp.einsum(spec, x, w.q.astype(x.dtype), preferred_element_type=out_dtype)
        y = rows_alike(product, x, invariant, _tile(x, w.q.shape, w.in_axes))
        return y * w.scale.astype(y.dtype)
    lead = x.shape[: x.ndim - w.in_axes]
    single = math.prod(lead) == 1
    if single:  # pair a lone token with a zero row: XLA:CPU's int8 product is slow for one row
        x = at_least_two(x, 0)
    x32 = x.astype(jnp.float32)
    x_scale = jnp.max(jnp.abs(x32), axis=tuple(range(len(lead), x.ndim)), keepdims=True) / 127.0
    x_scale = jnp.where(x_scale == 0, 1.0, x_scale)
    xq = jnp.clip(jnp.round(x32 / x_scale), -127, 127).astype(jnp.int8)
    y = jnp.einsum(spec, xq, w.q, preferred_element_type=jnp.int32).astype(jnp.float32)
    x_scale = x_scale.reshape(x_scale.shape[: len(lead)] + (1,) * (y.ndim - len(lead)))
    y = y * x_scale * w.scale
    if single:
        y = y[:1]
    return y.astype(out_dtype or x.dtype)
