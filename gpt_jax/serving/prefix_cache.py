"""Prefix caching: the keys and values of prompt blocks already prefilled, kept for the next prompt that starts
with the same tokens.

A block is C prompt tokens at positions j*C .. (j+1)*C - 1, C being the engine's prefill chunk, and its key is
the chain of contents up to it: sha256(key of block j - 1 + block j's token ids), so a block is found only after
the very same tokens. Blocks live on the device as their own arrays (memory follows use), at most `budget_bytes`
of them, and the least recently used goes first when a new one would not fit.

Why a hit is exact: the engine prefills every prompt longer than one chunk in chunks that start at multiples of
C, each chunk C columns wide and attending to a cache of `prefill.view_length(j, C)` positions, a function of
the chunk's index only. A block's keys and values are therefore computed by one program from the tokens up to it
and the blocks before it, whatever the prompt it was part of, and a hit copies exactly the values a miss would
compute (tests/test_prefix_cache.py checks hits against misses bit for bit).

Axes: R prefill rows * kv heads, K kv heads, H head dim, S cache positions, C block tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model.kv_cache import KVCache

DEFAULT_BUDGET_GB = 1.0


@dataclasses.dataclass
class Block:
    """One cached block: per layer keys [K, H, C] and values [K, C, H] (row 0 of the prefill that made it)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def block_keys(tokens: np.ndarray, block: int, count: int) -> list[bytes]:
    """The chain keys of the first `count` blocks of `block` tokens of `tokens` [L] (ints)."""
    keys, digest = [], b""
    ids = np.asarray(tokens, "<i4")
    for j in range(count):
        digest = hashlib.sha256(digest + ids[j * block : (j + 1) * block].tobytes()).digest()
        keys.append(digest)
    return keys


def block_bytes(config, block: int) -> int:
    """Bytes of one block of `block` tokens: keys and values of every layer's kv heads."""
    per_token = 2 * config.n_layers * config.n_kv_heads * config.head_dim * jnp.dtype(config.dtype).itemsize
    return per_token * block


class PrefixCache:
    """Blocks by chain key, least recently used first; `budget_bytes` bounds what they hold (0: nothing is kept).
    Counts the prompt tokens looked up and found, for the metrics. Used by the engine thread only."""

    def __init__(self, budget_bytes: int, block: int, bytes_per_block: int):
        self.block, self.bytes_per_block = block, bytes_per_block
        self.capacity = max(0, int(budget_bytes) // bytes_per_block)
        self.blocks: collections.OrderedDict[bytes, Block] = collections.OrderedDict()
        self.queried_tokens = self.hit_tokens = self.evicted = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def used_bytes(self) -> int:
        return len(self.blocks) * self.bytes_per_block

    def lookup(self, keys: list[bytes], prompt_tokens: int) -> list[Block]:
        """The cached blocks that start the chain `keys` (the longest run from the first), now most recently
        used; counts `prompt_tokens` queried and the run's tokens found."""
        found = []
        for key in keys:
            block = self.blocks.get(key)
            if block is None:
                break
            self.blocks.move_to_end(key)
            found.append(block)
        self.queried_tokens += prompt_tokens
        self.hit_tokens += len(found) * self.block
        return found

    def has(self, key: bytes) -> bool:
        return key in self.blocks

    def store(self, key: bytes, block: Block) -> None:
        """Keep `block` under `key` (most recently used), evicting the least recently used beyond the budget."""
        if not self.enabled:
            return
        self.blocks[key] = block
        self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
            self.evicted += 1


@partial(jax.jit, static_argnames=("kv_heads", "block"))
def take_block(cache: KVCache, start: jax.Array, *, kv_heads: int, block: int) -> Block:
    """Positions start .. start + C - 1 of row 0 of a prefill cache, as a Block."""
    k = tuple(jax.lax.dynamic_slice_in_dim(x[:kv_heads], start, block, axis=2) for x in cache.k)
    v = tuple(jax.lax.dynamic_slice_in_dim(x[:kv_heads], start, block, axis=1) for x in cache.v)
    return Block(k, v)


@partial(jax.jit, donate_argnums=(0,))
def put_block(cache: KVCache, block: Block, start: jax.Array) -> KVCache:
    """`cache` with `block` written at positions start .. start + C - 1 of every prefill row."""

    def put(full, part, axis):
        rows = full.shape[0] // part.shape[0]
        tiled = jnp.tile(part, (rows, 1, 1)).astype(full.dtype)
        begin = [0, 0, 0]
        begin[axis] = start
        return jax.lax.dynamic_update_slice(full, tiled, begin)

    return cache.replace(
        k=tuple(put(f, p, 2) for f, p in zip(cache.k, block.k)),
        v=tuple(put(f, p, 1) for f, p in zip(cache.v, block.v)),
    )


jax.tree_util.register_dataclass(Block, data_fields=["k", "v"], meta_fields=[])
