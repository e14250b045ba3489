"""Step 2: ragged prompts -> one left-padded batch with bucketed shapes.

Left padding puts every row's last prompt token in the same column, so the whole batch writes one cache slot per
step. Lengths are padded to buckets (powers of two) so that nearby sizes share one compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gpt_jax.model.kv_cache import positions_from_padding

MIN_LENGTH_BUCKET = 16


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    size = max(minimum, 1)
    while size < n:
        size *= 2
    return size


@dataclasses.dataclass(frozen=True)
class Batch:
    """A left-padded batch. tokens: [B, T]; pad_len, lengths: [B]; active: [B] (False for bucket filler rows)."""

    tokens: np.ndarray
    pad_len: np.ndarray
    lengths: np.ndarray
    active: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """[B, T] True where a real token stands."""
        return np.arange(self.tokens.shape[1])[None, :] >= self.pad_len[:, None]

    @property
    def positions(self) -> np.ndarray:
        """[B, T] positions counting real tokens only (0 at each row's first real token; 0 on padding)."""
        return np.asarray(positions_from_padding(np.arange(self.tokens.shape[1]), self.pad_len))

    @property
    def num_rows(self) -> int:
        """Rows the caller asked for (the rest are filler)."""
        return int(self.active.sum())


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, *, length: int | None = None, rows: int | None = None
) -> Batch:
    """Left-pad `prompts` (each non-empty) to `length` columns and add filler rows up to `rows`.

    Defaults: length = bucket(longest, 16), rows = bucket(len(prompts)). A filler row holds one pad token and is
    inactive: it is done from the start and its output is dropped.
    """
    longest = max(len(p) for p in prompts)
    length = length or bucket(longest, MIN_LENGTH_BUCKET)
    rows = rows or bucket(len(prompts))
    if longest > length or len(prompts) > rows:
        raise ValueError(f"batch of {len(prompts)} prompts up to {longest} tokens does not fit [{rows}, {length}]")
    tokens = np.full((rows, length), pad_id, np.int32)
    lengths = np.ones(rows, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt) :] = prompt
        lengths[row] = len(prompt)
    active = np.arange(rows) < len(prompts)
    return Batch(tokens=tokens, pad_len=(length - lengths).astype(np.int32), lengths=lengths, active=active)
