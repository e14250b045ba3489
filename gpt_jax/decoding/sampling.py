"""Steps 5 and 6: logits -> processed logits -> probabilities, and one draw per row from that row's key.

Order (as in vLLM): temperature -> top-k -> top-p -> min-p -> draw. Every setting is a per-row traced value,
so changing one never recompiles. Off values: top_k = 0, top_p = 1, min_p = 0; temperature = 0 means greedy.
Masked logits are a large finite negative, and inputs are sanitized first, so NaN or infinite logits can never
produce NaN probabilities or a token outside the vocabulary.

Axes: B batch, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model.kernels import cpu_products
from gpt_jax.model.numerics import MASK_VALUE
from gpt_jax.model.row_invariant import vocabulary_softmax

LOGIT_LIMIT = 1e20  # raw logits are clipped to +-LOGIT_LIMIT (NaN -> -LOGIT_LIMIT)
SCALED_LIMIT = 1e28  # logits / temperature are clipped to +-SCALED_LIMIT


def fill_rows(value, rows: int, dtype) -> np.ndarray:
    """A scalar broadcast to `rows`, or a per-row sequence extended to `rows` by repeating its last value (bucket
    filler rows copy the last real row's settings)."""
    arr = np.asarray(value, dtype)
    if arr.ndim == 0:
        return np.full(rows, arr, dtype)
    return np.concatenate([arr, np.full(rows - len(arr), arr[-1], dtype)])


@flax.struct.dataclass
class SamplingParams:
    """Per-row sampling settings, each [B]."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    min_p: jax.Array

    @classmethod
    def make(cls, rows: int, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> SamplingParams:
        """Scalars are broadcast to `rows`; sequences must already have one value per row (filler rows get the last).

        A setting left out is off (the model's own distribution): these are the sampler's neutral values, not the
        defaults of a generate call, which `settings.GenerationSettings` holds."""

        return cls(
            temperature=fill_rows(temperature, rows, np.float32),
            top_k=fill_rows(top_k, rows, np.int32),
            top_p=fill_rows(top_p, rows, np.float32),
            min_p=fill_rows(min_p, rows, np.float32),
        )


def sanitize(logits: jax.Array) -> jax.Array:
    """fp32, finite: NaN -> -LOGIT_LIMIT, +-inf and huge values clipped to +-LOGIT_LIMIT, -0.0 -> +0.0 (so the
    bit-pattern ranking of the filters agrees with argmax, for which the two zeros tie)."""
    x = logits.astype(jnp.float32)
    negative_zero = jax.lax.bitcast_convert_type(x, jnp.uint32) == jnp.uint32(0x80000000)
    x = jnp.where(jnp.isnan(x), -LOGIT_LIMIT, jnp.where(negative_zero, 0.0, x))
    return jnp.clip(x, -LOGIT_LIMIT, LOGIT_LIMIT)


def first_argmax(x: jax.Array) -> jax.Array:
    """[B, V] finite -> [B] int32 index of the largest value, the lowest index among ties (as jnp.argmax).

    A max and then a min over matching indices: two plain reductions, which XLA:CPU vectorizes, where
    jnp.argmax's paired-value reduction does not (several times faster over 50257 logits; docs/BENCHMARKS.md).
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == top, ids, x.shape[-1]), axis=-1)


def _sortable(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order, so a threshold can be bisected exactly over all 2**32 values."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _largest_threshold(enough: Callable[[jax.Array], jax.Array], rows: int) -> jax.Array:
    """Per row, the largest uint32 t with enough(t) [B] true; `enough` must be true up to some t, then false.

    Returns 0 where even enough(0) is false. Exactly 32 halvings of the 2**32 range.
    """
    lo = jnp.zeros((rows,), jnp.uint32)
    hi = jnp.full((rows,), 0xFFFFFFFF, jnp.uint32)

    def body(_, bounds):
        lo, hi = bounds
        gap = hi - lo
        mid = lo + (gap >> 1) + (gap & 1)  # rounds up, so lo < mid <= hi while lo < hi
        ok = enough(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    return jax.lax.fori_loop(0, 32, body, (lo, hi))[0]


UNIT = 2.0**31  # fixed-point units per unit of probability in top-p's sums
UNITS_OFF = 0xFFFFFFFF  # a budget no sum reaches: every token kept


def _fixed_point(p: jax.Array) -> jax.Array:
    """Probabilities as uint32 multiples of 2**-31, rounded to nearest. Top-p adds them up many times per step; an
    integer sum is exact in any order, so a row's kept set cannot depend on how XLA vectorizes the reduction for
    its batch (a float sum over [B, V] is YNNPACK's past 4096 elements, XLA's below). Each value is off by at most
    2**-32; a row's total stays under 2**32."""
    return jnp.round(p * UNIT).astype(jnp.uint32)


def _keep_top(keys: jax.Array, weights: jax.Array, budget: jax.Array) -> jax.Array:
    """[B, V] mask: token i is kept when the weight ranked above it is < budget [B] (at least 1: the top-ranked
    token is always kept).

    Ranking is by key, descending, ties broken by lower id (a stable sort's order). With weight 1 this is top-k;
    with probabilities it is top-p (the crossing token is kept). Where the CPU kernel runs, a radix select of the
    cut in integer sums (sampler.cc); elsewhere sort-free in XLA: the boundary key is found by bisection, and
    only the tied group at the boundary needs a cumulative sum. Both are exact, so they keep the same tokens.
    """
    budget = jnp.maximum(budget, 1)
    if cpu_products.enabled():
        boundary, last = cpu_products.keep_top_cut(keys, weights, budget)
        ids = jnp.arange(keys.shape[-1], dtype=jnp.int32)
        return (keys > boundary[:, None]) | ((keys == boundary[:, None]) & (ids <= last[:, None]))
    return _bisected_keep_top(keys, weights, budget)


def _bisected_keep_top(keys: jax.Array, weights: jax.Array, budget: jax.Array) -> jax.Array:
    """_keep_top in XLA's ops, for a budget of at least 1."""

    def above(t):  # [B] weight of the tokens whose key is > t
        return jnp.sum(jnp.where(keys > t[:, None], weights, 0), axis=-1)

    # The boundary key b is the smallest key whose strictly-above weight is < budget; all of b's tied group may stay.
    boundary = _largest_threshold(lambda t: above(t) >= budget, keys.shape[0]) + 1
    boundary = jnp.where(above(jnp.zeros_like(boundary)) < budget, 0, boundary)  # everything fits
    tied = keys == boundary[:, None]
    tied_weight = jnp.where(tied, weights, 0)
    before_in_tie = jnp.cumsum(tied_weight, axis=-1) - tied_weight
    return (keys > boundary[:, None]) | (tied & (above(boundary)[:, None] + before_in_tie < budget[:, None]))


def _filter(x: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """Sanitized logits [B, V] -> (scaled logits, keep mask), in order: temperature, top-k, top-p, min-p."""
    v = x.shape[-1]
    greedy = params.temperature <= 0
    temperature = jnp.where(greedy, 1.0, params.temperature)
    scaled = jnp.clip(x / temperature[:, None], -SCALED_LIMIT, SCALED_LIMIT)
    keys = _sortable(scaled)
    top_k = jnp.where((params.top_k > 0) & ~greedy, jnp.minimum(params.top_k, v), jnp.where(greedy, 1, v))
    everything = jnp.ones(scaled.shape, bool)
    keep = jax.lax.cond(
        jnp.any(top_k < v),
        lambda: _keep_top(keys, jnp.ones(scaled.shape, jnp.uint32), top_k.astype(jnp.uint32)),
        lambda: everything,
    )  # the bisections run only when some row uses the filter
    probs = vocabulary_softmax(jnp.where(keep, scaled, MASK_VALUE))
    top_p = jnp.where(params.top_p >= 1.0, 2.0, params.top_p)  # 1 means off (float rounding must not drop tokens)
    # ranked by scaled logit (as a sort of the logits would), so logits whose probabilities round equal stay ordered
    budget = jnp.where(top_p <= 1.0, _fixed_point(jnp.minimum(top_p, 1.0)), jnp.uint32(UNITS_OFF))
    mass = lambda: _keep_top(keys, _fixed_point(probs), budget)
    keep &= jax.lax.cond(jnp.any(top_p <= 1.0), mass, lambda: everything)
    keep &= probs >= params.min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
    return scaled, keep


def process_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """[B, V] raw logits -> [B, V] processed logits; removed tokens hold MASK_VALUE.

    Greedy rows (temperature 0) keep only their argmax.
    """
    scaled, keep = _filter(sanitize(logits), params)
    return jnp.where(keep, scaled, MASK_VALUE)


def probabilities(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """[B, V] the exact distribution `sample` draws from."""
    return vocabulary_softmax(process_logits(logits, params))


def _draw(keys: jax.Array, x: jax.Array, params: SamplingParams) -> jax.Array:
    """Inverse-CDF draw over the kept tokens in id order: one uniform per row, no sort."""
    scaled, keep = _filter(x, params)
    weights = jnp.where(keep, jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)), 0.0)
    cdf = jnp.cumsum(weights, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    token = jnp.sum(cdf <= (u * cdf[:, -1])[:, None], axis=-1)
    return jnp.minimum(token, x.shape[-1] - 1)


def sample(
    keys: jax.Array, logits: jax.Array, params: SamplingParams, raw_logits: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """One token per row from its own key. keys: [B]; logits: [B, V] -> tokens [B] int32, logprobs [B].

    The log-probability is under the model's unprocessed distribution (log_softmax of `raw_logits`, default
    `logits`), so it means the same whatever the sampling settings. A batch of greedy rows skips the filters.
    """
    x = sanitize(logits)
    greedy = first_argmax(x)
    drawn = jax.lax.cond(
        jnp.all(params.temperature <= 0), lambda: greedy, lambda: _draw(keys, x, params).astype(jnp.int32)
    )
    tokens = jnp.where(params.temperature <= 0, greedy, drawn)
    logprobs = vocabulary_softmax(x if raw_logits is None else sanitize(raw_logits), log=True)
    return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]


def row_keys(seed: jax.Array, row_seeds: jax.Array) -> jax.Array:
    """[B] row keys: fold_in(key(seed), row_seed); a row's t-th token draws from fold_in(row key, t) (`step_keys`)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(row_seeds)


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
    """[B] keys for generated-token index `step` (a scalar, or [B] one per row): fold_in(row_key, step)."""
    return jax.vmap(jax.random.fold_in, (0, 0 if jnp.ndim(step) else None))(keys, step)
