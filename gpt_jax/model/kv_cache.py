"""The explicit KV cache and the masks and positions that go with it.

Prompts are left-padded, so every row writes the same slot each step: the cache keeps one write index for the whole
batch and one `dynamic_update_slice` per layer per step does the write. A row's real tokens start at slot
`pad_len[row]`; its position at slot s is `s - pad_len[row]`.

Layout, chosen by measuring the decode step on XLA:CPU (numbers in docs/BENCHMARKS.md; TPU and GPU not measured):
  - kv heads ahead of slots (not [B, S, K, H]), so both attention products are batched matrix products over
    (B, K) and the whole cache is never transposed;
  - rows and kv heads merged into one leading axis R = B*K, keys stored [R, H, S] and values [R, S, H]: each
    product then takes the freshly updated cache as it is. With separate B and K axes XLA reshaped the update
    for the product and kept a second copy of it, and with keys [.., S, H] it transposed every layer's keys:
    dozens of cache-sized copies per step, none now (a test reads the compiled program for them).
On a mesh the merged axis is split over ("data", "model"), which is rows on data and kv heads on model.

Axes: B batch, T query length, S cache length, K kv heads, H head dim, R = B*K cache rows.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from gpt_jax.model.config import ModelConfig


def positions_from_padding(slots, pad_len):
    """Position of each slot ([T], or [B, T] per row) in each left-padded row [B]: slot - pad_len, 0 on padding
    -> [B, T].

    The one rule for positions: prefill, decode steps and uncached forward passes all use it.
    """
    slots = jnp.asarray(slots)
    slots = slots[None, :] if slots.ndim == 1 else slots
    return jnp.maximum(slots - jnp.asarray(pad_len)[:, None], 0).astype(jnp.int32)


@flax.struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # per layer, keys [B*K, H, S] (rows and kv heads merged, slots last: see above)
    v: tuple[jax.Array, ...]  # per layer, values [B*K, S, H]
    index: jax.Array  # int32: the next slot to write, a scalar for the whole batch or [B] one per row (speculation)
    view: int | None = flax.struct.field(pytree_node=False, default=None)  # attention sees slots 0 .. view-1 only

    @property
    def length(self) -> int:
        """S, the number of slots."""
        return self.v[0].shape[1]

    @property
    def attended(self) -> int:
        """The slots a pass attends to: the first `view` (every query's slot must lie below it), else all S. The
        writes go to the whole cache in place; the CPU kernel reads the view where it lies, XLA's products a slice
        of it (layers.Attention)."""
        return self.length if self.view is None else self.view

    def write(self, layer: int, k: jax.Array, v: jax.Array) -> tuple[KVCache, jax.Array, jax.Array]:
        """Write [B, T, K, H] keys and values at `index` of one layer; return the cache and that layer's full
        keys [B*K, H, S] and values [B*K, S, H]."""
        k, v = cache_layout(k.astype(self.k[layer].dtype), v.astype(self.v[layer].dtype))  # small: T slots
        if self.index.ndim == 0:
            k_all = jax.lax.dynamic_update_slice(self.k[layer], k, (0, 0, self.index))
            v_all = jax.lax.dynamic_update_slice(self.v[layer], v, (0, self.index, 0))
        else:  # each row at its own slot: [B*K, ...] seen as [B, K, ...]
            k_all = _per_row_write(self.k[layer], k, self.index, axis=2)
            v_all = _per_row_write(self.v[layer], v, self.index, axis=1)
        ks = self.k[:layer] + (k_all,) + self.k[layer + 1 :]
        vs = self.v[:layer] + (v_all,) + self.v[layer + 1 :]
        return self.replace(k=ks, v=vs), k_all, v_all

    def advance(self, steps: int | jax.Array) -> KVCache:
        return self.replace(index=self.index + steps)


def _per_row_write(cache: jax.Array, update: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """Write update [B*K, ...] into cache [B*K, ...] at slot index[b] (along `axis`) of each row b's K entries."""
    b = index.shape[0]
    rows = lambda x: x.reshape(b, x.shape[0] // b, *x.shape[1:])

    def write(c, u, i):
        start = [0] * c.ndim
        start[axis] = i
        return jax.lax.dynamic_update_slice(c, u, start)

    return jax.vmap(write)(rows(cache), rows(update), index).reshape(cache.shape)


def cache_layout(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values [B, T, K, H] -> keys [B*K, H, T] and values [B*K, T, H], the cache's layout."""
    b, t, n_kv, h = k.shape
    return (
        jnp.transpose(k, (0, 2, 3, 1)).reshape(b * n_kv, h, t),
        jnp.transpose(v, (0, 2, 1, 3)).reshape(b * n_kv, t, h),
    )


def init_cache(config: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
    """An empty cache of `length` slots for `batch` rows."""
    dtype = dtype or jnp.dtype(config.dtype)
    rows = batch * config.n_kv_heads
    return KVCache(
        k=tuple(jnp.zeros((rows, config.head_dim, length), dtype) for _ in range(config.n_layers)),
        v=tuple(jnp.zeros((rows, length, config.head_dim), dtype) for _ in range(config.n_layers)),
        index=jnp.zeros((), jnp.int32),
    )


def cached_positions_and_mask(
    index: jax.Array, pad_len: jax.Array, query_len: int, cache_len: int
) -> tuple[jax.Array, jax.Array]:
    """Positions [B, T] of queries written at slots index..index+T-1 (index a scalar, or [B] one per row), and their
    attention mask [B, T, S].

    A query at slot q sees slot s when the row's real tokens start at or before s and s <= q (causal).
    """
    offsets = jnp.arange(query_len, dtype=jnp.int32)
    if jnp.ndim(index) == 0:
        query_slots = jnp.broadcast_to(index + offsets, (pad_len.shape[0], query_len))  # [B, T]
    else:
        query_slots = index[:, None] + offsets[None, :]  # [B, T]
    positions = positions_from_padding(query_slots, pad_len)  # [B, T]
    key_slots = jnp.arange(cache_len, dtype=jnp.int32)  # [S]
    mask = (key_slots[None, None, :] >= pad_len[:, None, None]) & (key_slots[None, None, :] <= query_slots[:, :, None])
    return positions, mask


def sliding_window_mask(mask: jax.Array, window: int) -> jax.Array:
    """[B, T, S] causal mask -> the same mask keeping, per query, only the last `window` visible keys.

    A row's visible keys are one contiguous run of slots ending at the query's own slot (left padding, causal), so
    counting them from the right gives query position - key position + 1: keep where that is <= window.
    """
    from_the_right = jnp.flip(jnp.cumsum(jnp.flip(mask, -1), axis=-1, dtype=jnp.int32), -1)
    return mask & (from_the_right <= window)


def uncached_positions_and_mask(pad_len: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """Positions [B, T] and causal mask [B, T, T] of left-padded rows in a forward pass without a cache."""
    return cached_positions_and_mask(jnp.zeros((), jnp.int32), pad_len, length, length)
