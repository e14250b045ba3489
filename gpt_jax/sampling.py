"""Steps 5 and 6: logits -> processed logits -> probabilities, and one draw per row from that row's key.

Order (DESIGN decision 7): temperature -> top-k -> top-p -> min-p -> draw. Every setting is a per-row traced value,
so changing one never recompiles. Off values: top_k = 0, top_p = 1, min_p = 0; temperature = 0 means greedy.
Masked logits are a large finite negative, and inputs are sanitized first, so NaN or infinite logits can never
produce NaN probabilities or a token outside the vocabulary.

Axes: B batch, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

MASK_VALUE = -1e30  # below every sanitized logit
LOGIT_LIMIT = 1e20  # raw logits are clipped to +-LOGIT_LIMIT (NaN -> -LOGIT_LIMIT)
SCALED_LIMIT = 1e28  # logits / temperature are clipped to +-SCALED_LIMIT


@flax.struct.dataclass
class SamplingParams:
    """Per-row sampling settings, each [B]."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    min_p: jax.Array

    @classmethod
    def make(cls, rows: int, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> SamplingParams:
        """Scalars are broadcast to `rows`; sequences must already have one value per row (filler rows get the last)."""

        def per_row(value, dtype):
            arr = np.asarray(value, dtype)
            if arr.ndim == 0:
                return np.full(rows, arr, dtype)
            return np.concatenate([arr, np.full(rows - len(arr), arr[-1], dtype)])

        return cls(
            temperature=per_row(temperature, np.float32),
            top_k=per_row(top_k, np.int32),
            top_p=per_row(top_p, np.float32),
            min_p=per_row(min_p, np.float32),
        )


def sanitize(logits: jax.Array) -> jax.Array:
    """fp32, finite: NaN -> -LOGIT_LIMIT, +-inf and huge values clipped to +-LOGIT_LIMIT."""
    x = logits.astype(jnp.float32)
    x = jnp.where(jnp.isnan(x), -LOGIT_LIMIT, x)
    return jnp.clip(x, -LOGIT_LIMIT, LOGIT_LIMIT)


def process_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """[B, V] raw logits -> [B, V] processed logits; removed tokens hold MASK_VALUE.

    Greedy rows (temperature 0) keep only their argmax.
    """
    x = sanitize(logits)
    b, v = x.shape
    greedy = params.temperature <= 0
    temperature = jnp.where(greedy, 1.0, params.temperature)
    scaled = jnp.clip(x / temperature[:, None], -SCALED_LIMIT, SCALED_LIMIT)

    order = jnp.argsort(-scaled, axis=-1, stable=True)  # [B, V], descending; ties by lower id
    ranked = jnp.take_along_axis(scaled, order, axis=-1)
    rank = jnp.arange(v)[None, :]
    top_k = jnp.where(params.top_k > 0, params.top_k, v)
    keep = rank < top_k[:, None]
    probs = jax.nn.softmax(jnp.where(keep, ranked, MASK_VALUE), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ranked above each token
    keep &= (before < params.top_p[:, None]) | (params.top_p[:, None] >= 1.0)  # the crossing token is kept
    keep &= probs >= params.min_p[:, None] * probs[:, :1]
    keep &= (rank == 0) | ~greedy[:, None]
    keep = keep.at[:, 0].set(True)

    rows = jnp.arange(b)[:, None]
    keep_by_id = jnp.zeros_like(keep).at[rows, order].set(keep)
    return jnp.where(keep_by_id, scaled, MASK_VALUE)


def probabilities(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """[B, V] the exact distribution `sample` draws from."""
    return jax.nn.softmax(process_logits(logits, params), axis=-1)


def sample(keys: jax.Array, logits: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """One token per row from its own key. keys: [B]; logits: [B, V] -> tokens [B] int32, logprobs [B].

    The log-probability is under the model's unprocessed distribution (log_softmax of the raw logits), so it means
    the same whatever the sampling settings.
    """
    processed = process_logits(logits, params)
    drawn = jax.vmap(jax.random.categorical)(keys, jax.nn.log_softmax(processed, axis=-1))
    greedy = jnp.argmax(processed, axis=-1)
    tokens = jnp.where(params.temperature <= 0, greedy, drawn).astype(jnp.int32)
    tokens = jnp.clip(tokens, 0, logits.shape[-1] - 1)
    raw_logprobs = jax.nn.log_softmax(sanitize(logits), axis=-1)
    return tokens, jnp.take_along_axis(raw_logprobs, tokens[:, None], axis=-1)[:, 0]


def row_keys(seed: jax.Array, row_seeds: jax.Array) -> jax.Array:
    """[B] row keys: fold_in(key(seed), row_seed) (DESIGN decision 6)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(row_seeds)


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
    """[B] keys for generated-token index `step`: fold_in(row_key, step)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)


def as_rows(values: Sequence | float, rows: int) -> list:
    """Helper for callers: a scalar repeated, or a per-row sequence checked for length."""
    if isinstance(values, (list, tuple, np.ndarray)):
        return list(values)
    return [values] * rows
