"""Arithmetic whose result for one row never depends on how many rows are computed with it.

Speculative decoding verifies k + 1 positions of a row in one forward pass where plain decoding computes them one
pass each, and a row decodes beside a varying set of batch-mates; both must give bit-identical values per row, or a
sampled draw that lands within rounding of a boundary picks another token. XLA chooses how to vectorise a
reduction and which kernel multiplies by the shape of the whole array (on XLA:CPU a row mean over [1, T, D] is
summed in another order for T = 1 and T = 6; one row is multiplied by a matrix-vector kernel that rounds otherwise
than the matrix-matrix one; and that one switches kernels past 16 rows for some widths), so:

  row_sum / row_max / last_axis_mean / softmax
               sums (and maxima) over the last axis as a tree of elementwise ops (each element with the one half
               the width after it), padded to a power of two: no compiler reorders them, and trailing zeros add
               nothing, so a row's sum is the same in every array it sits in (and over every padded key length). No reduce op either: XLA:CPU hands a
               reduce over 4096 elements or more to YNNPACK together with the elementwise ops around it, and
               YNNPACK's exp rounds otherwise than XLA's.
  rows_alike   a decode step's or verification pass's products over tiles of 2 to `tile` rows: a lone row is
               paired with a zero row and more rows are multiplied `tile` at a time. XLA:CPU's product kernel for
               a few rows switches to another one at a row count that depends on the contracted width (measured:
               after 16 rows at width 768, 9 at 896, 4 at 960, 2 at 992, 32 at 384 and 512, 48 at 256, not up to
               2048 rows at widths 1024 to 4096), so each product shape's tile (2 to 256 rows) is measured once
               per process (`dense_tile`) rather than fixed: as large as the kernels allow.
               Past 2 * GROUP_TILES tiles the full groups of tiles run in a `lax.map` loop, GROUP_TILES
               products unrolled in its body: the program stops growing with the batch.
  tiled        the same tiling along any axis: attention's batched products, whose rows are query positions
               (QUERY_TILE per tile; a row has at most 17 positions times the query heads per kv head).
  key_blocks   the query-key product over KEY_BLOCK key slots at a time: with two or more query rows XLA:CPU
               switches kernels past 512 key columns (measured), so a longer cache (a generate call with a larger
               budget, a serving dispatch over a larger bucket) would change a row's scores; in blocks it only adds
               blocks, whose masked scores become exact zeros after the softmax. The probabilities-values product
               contracts over the slots and is not blocked: its trailing zero probabilities add exact zeros
               (measured up to 8192 slots; tests/test_row_invariant.py).

Which arithmetic a forward pass uses is said by its caller (`ForwardMode`), never guessed from a shape: a decode
step (one position per row) and a speculative verification pass (k + 1 positions) are row-invariant; a prefill (a
prompt, or a chunk of one, however short) is exact where the CPU kernel runs (`ForwardMode.fixed_order`: its
products from the kernel, its sums the fixed trees, attention's over the slots in slot order, so its left padding,
its batch-mates and its chunking change nothing) and keeps XLA's own sums and whole products elsewhere, where tiles
would make a long prompt slow.

Which arithmetic a Generator uses is its `arithmetic` ("exact", the default, or "fast": every pass as a prefill,
XLA's own sums and whole products, so a lone row takes the matrix-vector kernel and a large batch one product);
generate, streams, speculation and the server all use the Generator's programs, so the choice cannot differ
between them.

On XLA:CPU with one device, a decode step's and verification pass's float32 products, the weights' and
attention's two, do not go through rows_alike, tiled or key_blocks at all: they come from a kernel of our own
(model/kernels/cpu_products.py), which computes every element by one fixed sequence of multiply-adds whatever the
row count (and, for attention, whatever the number of query rows and cache slots: a score depends on its own query
and key only, and unfilled slots' zero probabilities add exact zeros), so it needs no tiles, reads each weight once
per product and runs a lone row at about the read bandwidth. Everything else (int8 and bfloat16 weights and
caches, other backends, a CPU process with several devices) keeps the tiles below.

tests/test_row_invariant.py measures the kernel classes this relies on for the model's shapes, and that a row's
logits are bit-identical at any batch size and any number of positions; tests/test_cpu_products.py does the same
for the kernel. The price of the tiles, measured on XLA:CPU: a lone row is multiplied as two (the matrix-vector
kernel is faster), and a batch of more than one tile reads each weight once per tile (docs/BENCHMARKS.md,
`gpt-jax bench --invariance`).

Axes: ... leading axes, N the summed axis; B batch, T positions, I a product's contracted axis.
"""

from __future__ import annotations

import enum
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.errors import InputError, check
from gpt_jax.model.kernels import cpu_products

TILE_SIZES = (2, 3, 4, 6, 8, 9, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # the row counts a tile is tried at
MAX_ROW_TILE = TILE_SIZES[-1]
QUERY_TILE = 16  # attention's query positions per tile
KEY_BLOCK = 512  # attention's key slots per query-key product (XLA:CPU switches kernels past 512 columns)
UNROLLED_BLOCKS = 4  # more key blocks than this run in a loop
GROUP_TILES = 16  # tiles per iteration of the loop that large batches run in
PROBE_COLUMNS = 512
ARITHMETICS = ("exact", "fast")


class ForwardMode(enum.Enum):
    """What a forward pass is, said by its caller; it decides the arithmetic."""

    PREFILL = "prefill"  # a prompt or a chunk of one: the kernel's products and fixed sums where the kernel runs
    DECODE = "decode"  # one new position per row: row-invariant
    VERIFY = "verify"  # k + 1 proposed positions per row, checked at once: row-invariant, like k + 1 decode steps
    FAST = "fast"  # any pass under arithmetic="fast" (and parameter init): XLA's own sums and whole products

    @property
    def row_invariant(self) -> bool:
        """Row-invariant whatever the backend: products in measured tiles where the kernel does not run."""
        return self in (ForwardMode.DECODE, ForwardMode.VERIFY)

    @property
    def fixed_order(self) -> bool:
        """Fixed-order sums, and float32 products from the CPU kernel where it runs: every row-invariant pass, and
        a prefill in a process where the kernel is enabled (there a prompt's numbers do not depend on its
        batch-mates, its padding or how it is chunked; elsewhere a prefill keeps XLA's own arithmetic, as tiles
        would make a long prompt slow)."""
        return self.row_invariant or (self is ForwardMode.PREFILL and cpu_products.enabled())


def check_arithmetic(arithmetic) -> str:
    """`arithmetic` if it names one of ARITHMETICS, else an InputError naming the allowed values."""
    check(
        arithmetic in ARITHMETICS,
        InputError,
        f"arithmetic must be one of {', '.join(map(repr, ARITHMETICS))}, got {arithmetic!r}",
    )
    return arithmetic


def _pairwise(x: jax.Array, combine, fill: float, keepdims: bool) -> jax.Array:
    """Reduce the last axis by `combine`, level by level (each element with the one half the width after it), padded
    with `fill` to a power of two. Padding to a larger power of two changes nothing: the first levels then combine
    each element with `fill`."""
    n = x.shape[-1]
    width = 1 << max(0, math.ceil(math.log2(max(n, 1))))
    if width != n:
        x = jnp.concatenate([x, jnp.full((*x.shape[:-1], width - n), fill, x.dtype)], axis=-1)
    while x.shape[-1] > 1:  # element i with element i + half: contiguous halves, which vectorize
        half = x.shape[-1] // 2
        x = combine(x[..., :half], x[..., half:])
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


def element_order_sum(x: jax.Array) -> jax.Array:
    """[..., N] -> [..., 1]: the sum over the last axis from the CPU kernel, one accumulator from element 0 up (x
    times a column of ones), so zeros before the first value and after the last add exact zeros, and a row's sum is
    the same in any array. Only where `cpu_products.enabled()`."""
    return cpu_products.row_product(x, jnp.ones((x.shape[-1], 1), jnp.float32))


def element_order_softmax(x: jax.Array, log: bool = False) -> jax.Array:
    """[..., N] -> [..., N]: softmax (or log-softmax) over the last axis with the sum from element_order_sum, so
    zero probabilities before a row's first value (left padding) and after its last (unfilled cache slots) add exact
    zeros and a row's values are the same in any array. The max is row_max (exact in any order, and no reduce op for
    YNNPACK to fuse with the exp, see softmax). Only where `cpu_products.enabled()`."""
    shifted = x - jax.lax.stop_gradient(row_max(x, keepdims=True))
    exp = jnp.exp(shifted)
    return shifted - jnp.log(element_order_sum(exp)) if log else exp / element_order_sum(exp)


def vocabulary_softmax(x: jax.Array, log: bool = False) -> jax.Array:
    """[B, V] -> [B, V]: a sampler's softmax (or log-softmax) over the vocabulary: element_order_softmax where the
    CPU kernel runs, so a row's values do not depend on its batch-mates (XLA's reduce over [B, V] is YNNPACK's past
    4096 elements and XLA's below, so [1, V] and [2, V] rounded otherwise); elsewhere XLA's own."""
    if not cpu_products.enabled():
        return jax.nn.log_softmax(x, axis=-1) if log else jax.nn.softmax(x, axis=-1)
    return element_order_softmax(x, log)


def at_least_two(x: jax.Array, axis: int) -> jax.Array:
    """x with a zero row appended along `axis` where it has only one there (a product's rows)."""
    return jnp.concatenate([x, jnp.zeros_like(x)], axis=axis) if x.shape[axis] == 1 else x


@functools.cache
def _measured_tile(backend: str, k: int, n: int, dtype: str, transposed: bool) -> int:
    """The largest of TILE_SIZES up to which an [M, k] x [k, n] product (weight [n, k] where `transposed`) rounds
    its first two rows as a two-row product does, at every size of TILE_SIZES below it: one compiled program of
    those products, on made-up values, run once per shape and process. The kernels' switches are thresholds in
    the row count (measured: one class of rows from 2 up to the switch), so the sizes in between are alike too;
    tests/test_row_invariant.py checks every row count of the presets' shapes."""
    cols = min(n, PROBE_COLUMNS)  # past a few hundred columns the kernel choice no longer changes (measured)
    x = np.sin(np.arange(MAX_ROW_TILE * k, dtype=np.float32) * 0.7311).reshape(MAX_ROW_TILE, k)
    w = np.cos(np.arange(k * cols, dtype=np.float32) * 0.1237).reshape((cols, k) if transposed else (k, cols)) * 0.05
    spec = "MK,NK->MN" if transposed else "MK,KN->MN"  # the weight an argument in its own layout, like a parameter

    def products(x, w):
        return [jnp.einsum(spec, x[:m], w, preferred_element_type=jnp.float32)[:2] for m in TILE_SIZES]

    with jax.ensure_compile_time_eval():
        outs = [np.asarray(o) for o in jax.jit(products)(x.astype(dtype), w.astype(dtype))]
    tile = 2
    for m, out in zip(TILE_SIZES, outs):
        if not np.array_equal(out, outs[0]):
            break
        tile = m
    return tile


def dense_tile(k: int, n: int, dtype, transposed: bool = False) -> int:
    """Rows per tile of a decode product [M, k] x [k, n] on the default backend (see _measured_tile)."""
    return _measured_tile(jax.default_backend(), k, n, jnp.dtype(dtype).name, transposed)


def _loop_over_groups(product, x: jax.Array, tile: int) -> jax.Array:
    """product(x) for x [G*GROUP_TILES*tile, ...]: a loop over groups of GROUP_TILES tiles, unrolled within a
    group, so the program holds GROUP_TILES products whatever the row count."""
    groups = x.reshape(-1, GROUP_TILES, tile, *x.shape[1:])
    out = jax.lax.map(lambda group: jnp.stack([product(t) for t in group]), groups)
    return out.reshape(-1, *out.shape[3:])


def tiled(product, x: jax.Array, axis: int, tile: int = QUERY_TILE) -> jax.Array:
    """product(x) with x's rows along `axis` multiplied in tiles of 2 to `tile` rows (a lone row paired with a zero
    row); product must keep that axis where it was. Past 2 * GROUP_TILES tiles (rows along axis 0 only) the full
    groups of tiles run in a loop (_loop_over_groups), so the program stops growing with the batch."""
    n = x.shape[axis]
    if 2 <= n <= tile:
        return product(x)
    pieces, start = [], 0
    looped = (n // (GROUP_TILES * tile)) * GROUP_TILES * tile if axis == 0 and n >= 2 * GROUP_TILES * tile else 0
    if looped:
        pieces.append(_loop_over_groups(product, x[:looped], tile))
        start = looped
    for first in range(start, n, tile):
        size = min(tile, n - first)
        out = product(at_least_two(jax.lax.slice_in_dim(x, first, first + size, axis=axis), axis))
        pieces.append(jax.lax.slice_in_dim(out, 0, size, axis=axis))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=axis)


def key_blocks(product, keys: jax.Array, block: int = KEY_BLOCK) -> jax.Array:
    """product(keys) for keys [..., S] (key slots last) computed over KEY_BLOCK slots at a time and concatenated
    on the output's last axis, so every product has at most `block` columns whatever the cache's length (a longer
    cache only adds blocks). Past UNROLLED_BLOCKS full blocks they run in a loop (a dynamic slice per block)."""
    n = keys.shape[-1]
    if n <= block:
        return product(keys)
    full, pieces = n // block, []
    if full > UNROLLED_BLOCKS:
        one = lambda i: product(jax.lax.dynamic_slice_in_dim(keys, i * block, block, axis=keys.ndim - 1))
        looped = jax.lax.map(one, jnp.arange(full))  # [nb, ..., block]
        pieces.append(jnp.moveaxis(looped, 0, -2).reshape(*looped.shape[1:-1], full * block))
    else:
        pieces += [product(jax.lax.slice_in_dim(keys, i * block, (i + 1) * block, axis=-1)) for i in range(full)]
    if n % block:
        pieces.append(product(jax.lax.slice_in_dim(keys, full * block, n, axis=-1)))
    return jnp.concatenate(pieces, axis=-1)


def rows_alike(product, x: jax.Array, invariant: bool, tile=QUERY_TILE) -> jax.Array:
    """product(x) for x [B, T, ..., I] (I contracted). Where `invariant`, its B*T rows are multiplied in tiles of 2
    to `tile` rows, so each row meets the same kernel whatever the row count; otherwise x is multiplied whole.
    `tile` may be a function giving it, called only where there are more than two rows (a lone row's decode step
    measures nothing)."""
    if not invariant:
        return product(x)
    flat = x.reshape(x.shape[0] * x.shape[1], 1, *x.shape[2:])
    if callable(tile):
        tile = tile() if flat.shape[0] > 2 else 2
    out = tiled(product, flat, 0, tile)
    return out.reshape(*x.shape[:2], *out.shape[2:])
