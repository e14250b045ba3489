"""Arithmetic whose result for one row never depends on how many rows are computed with it.

Speculative decoding verifies k + 1 positions of a row in one forward pass where plain decoding computes them one
pass each, and a row decodes beside a varying set of batch-mates; both must give bit-identical values per row, or a
sampled draw that lands within rounding of a boundary picks another token. XLA chooses how to vectorise a
reduction and which kernel multiplies by the shape of the whole array (on XLA:CPU a row mean over [1, T, D] is
summed in another order for T = 1 and T = 6; one row is multiplied by a matrix-vector kernel that rounds otherwise
than the matrix-matrix one; and that one switches kernels past 16 rows for some widths), so:

  row_sum / row_max / last_axis_mean / softmax
               sums (and maxima) over the last axis as a tree of elementwise ops on neighbours, padded to a power
               of two: no compiler reorders them, and trailing zeros add nothing, so a row's sum is the same in
               every array it sits in (and over every padded key length). No reduce op either: XLA:CPU hands a
               reduce over 4096 elements or more to YNNPACK together with the elementwise ops around it, and
               YNNPACK's exp rounds otherwise than XLA's.
  rows_alike   a decode step's or verification pass's products over tiles of 2 to ROW_TILE rows: a lone row is
               paired with a zero row and more rows are multiplied ROW_TILE at a time.
  tiled        the same tiling along any axis: attention's batched products, whose rows are query positions.

Which arithmetic a forward pass uses is said by its caller (`ForwardMode`), never guessed from a shape: a decode
step (one position per row) and a speculative verification pass (k + 1 positions) are row-invariant; a prefill (a
prompt, or a chunk of one, however short) keeps XLA's own sums and whole products, which compile faster: nothing
else computes its rows to compare with.

tests/test_row_invariant.py measures the kernel classes this relies on for the model's shapes, and that a row's
logits are bit-identical at any batch size and any number of positions. The price, measured on XLA:CPU: a batch-1
decode step multiplies two rows instead of one (the matrix-vector kernel is faster; docs/BENCHMARKS.md).

Axes: ... leading axes, N the summed axis; B batch, T positions, I a product's contracted axis.
"""

from __future__ import annotations

import enum
import math

import jax
import jax.numpy as jnp

ROW_TILE = 16


class ForwardMode(enum.Enum):
    """What a forward pass is, said by its caller; it decides the arithmetic."""

    PREFILL = "prefill"  # a prompt or a chunk of one: XLA's own sums and whole products
    DECODE = "decode"  # one new position per row: row-invariant
    VERIFY = "verify"  # k + 1 proposed positions per row, checked at once: row-invariant, like k + 1 decode steps

    @property
    def row_invariant(self) -> bool:
        return self is not ForwardMode.PREFILL


def _pairwise(x: jax.Array, combine, fill: float, keepdims: bool) -> jax.Array:
    """Reduce the last axis by `combine` over neighbours, level by level, padded with `fill` to a power of two."""
    n = x.shape[-1]
    width = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    if width != n:
        x = jnp.concatenate([x, jnp.full((*x.shape[:-1], width - n), fill, x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
        x = combine(pairs[..., 0], pairs[..., 1])
    return x if keepdims else x[..., 0]


def row_sum(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """[..., N] -> [...] (or [..., 1]): the sum over the last axis, in a fixed pairwise order."""
    return _pairwise(x, jnp.add, 0.0, keepdims)


def row_max(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """[..., N] -> [...] (or [..., 1]): the max over the last axis, as elementwise maxima (no reduce op, see
    softmax)."""
    return _pairwise(x, jnp.maximum, -jnp.inf, keepdims)


def last_axis_mean(x: jax.Array, invariant: bool) -> jax.Array:
    """[..., N] -> [..., 1]: row_sum / N where `invariant`, XLA's mean otherwise."""
    return row_sum(x, keepdims=True) / x.shape[-1] if invariant else x.mean(-1, keepdims=True)


def softmax(x: jax.Array) -> jax.Array:
    """[..., N] -> [..., N]: softmax over the last axis, summed by row_sum. The max is row_max, not a reduce op:
    XLA:CPU hands a reduce over 4096 elements or more to YNNPACK together with the exp after it, and YNNPACK's exp
    rounds otherwise than XLA's, so a row's probabilities changed once its batch-mates made the array that big."""
    shifted = jnp.exp(x - jax.lax.stop_gradient(row_max(x, keepdims=True)))
    return shifted / row_sum(shifted, keepdims=True)


def at_least_two(x: jax.Array, axis: int) -> jax.Array:
    """x with a zero row appended along `axis` where it has only one there (a product's rows)."""
    return jnp.concatenate([x, jnp.zeros_like(x)], axis=axis) if x.shape[axis] == 1 else x


def tiled(product, x: jax.Array, axis: int) -> jax.Array:
    """product(x) with x's rows along `axis` multiplied in tiles of 2 to ROW_TILE (a lone row paired with a zero
    row); product must keep that axis where it was."""
    n = x.shape[axis]
    if 2 <= n <= ROW_TILE:
        return product(x)
    tiles = []
    for start in range(0, n, ROW_TILE):
        size = min(ROW_TILE, n - start)
        out = product(at_least_two(jax.lax.slice_in_dim(x, start, start + size, axis=axis), axis))
        tiles.append(jax.lax.slice_in_dim(out, 0, size, axis=axis))
    return tiles[0] if len(tiles) == 1 else jnp.concatenate(tiles, axis=axis)


def rows_alike(product, x: jax.Array, invariant: bool) -> jax.Array:
    """product(x) for x [B, T, ..., I] (I contracted). Where `invariant`, its B*T rows are multiplied in tiles of 2
    to ROW_TILE rows, so each row meets the same kernel whatever the row count; otherwise x is multiplied whole."""
    if not invariant:
        return product(x)
    flat = x.reshape(x.shape[0] * x.shape[1], 1, *x.shape[2:])
    out = tiled(product, flat, 0)
    return out.reshape(*x.shape[:2], *out.shape[2:])
