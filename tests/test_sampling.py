"""The sampler against an independent numpy reference and by the statistics of many draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpt_jax.decoding.sampling import (
    SamplingParams,
    first_argmax,
    probabilities,
    row_keys,
    sample,
    sanitize,
    step_keys,
)

from .conftest import assert_matches_distribution

LOGITS = np.array([2.0, 1.5, 1.0, 0.9, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, 1.2, 0.1], np.float32)


def reference(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """Exact processed distribution, written independently with numpy (vLLM's order and conventions)."""
    x = logits.astype(np.float64)
    if temperature == 0:
        out = np.zeros_like(x)
        out[np.argmax(x)] = 1.0
        return out
    x = x / temperature
    order = np.argsort(-x, kind="stable")
    p = np.exp(x[order] - x[order].max())
    if top_k > 0:
        p[top_k:] = 0
    p /= p.sum()
    if top_p < 1:
        crossing = int(np.argmax(np.cumsum(p) >= top_p - 1e-12))  # first rank whose prefix reaches top_p
        p[crossing + 1 :] = 0
        p /= p.sum()
    p[p < min_p * p.max()] = 0
    p /= p.sum()
    out = np.zeros_like(p)
    out[order] = p
    return out


CASES = [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(top_k=3),
    dict(top_p=0.6),
    dict(top_k=5, top_p=0.8, temperature=0.7),
    dict(min_p=0.3),
    dict(temperature=1.3, top_k=8, top_p=0.9, min_p=0.05),
]


@pytest.mark.parametrize("case", CASES)
def test_probabilities_equal_reference(case):
    params = SamplingParams.make(1, **case)
    got = np.asarray(probabilities(jnp.asarray(LOGITS)[None], params))[0]
    np.testing.assert_allclose(got, reference(LOGITS, **case), atol=1e-6)


def test_top_p_keeps_the_crossing_token():
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    for top_p, kept in [(0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3)]:
        got = np.asarray(probabilities(jnp.asarray(logits)[None], SamplingParams.make(1, top_p=top_p)))[0]
        assert (got > 0).sum() == kept, (top_p, got)


@jax.jit
def _draw_many(keys, logits, params):
    return sample(keys, logits, params)[0]


@pytest.mark.parametrize("case", CASES)
def test_draw_frequencies_match_exact_probabilities(case):
    n = 20000
    params = SamplingParams.make(n, **case)
    keys = jax.random.split(jax.random.key(7), n)
    tokens = np.asarray(_draw_many(keys, jnp.broadcast_to(jnp.asarray(LOGITS), (n, len(LOGITS))), params))
    assert_matches_distribution(tokens, reference(LOGITS, **case))


@pytest.mark.parametrize("case", [dict(temperature=0.0), dict(top_k=1), dict(temperature=0.0, top_p=0.3)])
def test_greedy_and_top_k_1_are_argmax(case):
    logits = jax.random.normal(jax.random.key(0), (6, 50))
    keys = jax.random.split(jax.random.key(1), 6)
    tokens, logprobs = sample(keys, logits, SamplingParams.make(6, **case))
    np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
    np.testing.assert_allclose(logprobs, np.max(jax.nn.log_softmax(logits), axis=-1), rtol=1e-6)


def test_logprob_is_under_the_raw_distribution():
    logits = jnp.asarray(LOGITS)[None]
    token, logprob = sample(jax.random.split(jax.random.key(3), 1), logits, SamplingParams.make(1, top_k=2))
    assert np.isclose(logprob[0], jax.nn.log_softmax(logits)[0, token[0]])


def test_keys_follow_the_design():
    keys = row_keys(jnp.uint32(5), jnp.array([0, 7]))
    expected = jax.random.fold_in(jax.random.key(5), 7)
    assert jnp.array_equal(jax.random.key_data(keys[1]), jax.random.key_data(expected))
    at3 = step_keys(keys, jnp.int32(3))
    assert jnp.array_equal(jax.random.key_data(at3[1]), jax.random.key_data(jax.random.fold_in(expected, 3)))


_ANY_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -3e38, 0.0]),
)


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(_ANY_FLOAT, min_size=16, max_size=16),
    temperature=st.sampled_from([0.0, 1e-3, 0.7, 1.0, 50.0]),
    top_k=st.integers(0, 20),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
@example(logits=[-0.0] + [0.0] * 15, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, seed=0)  # argmax ties -0.0, +0.0
def test_hostile_logits_give_valid_tokens_and_distributions(logits, temperature, top_k, top_p, min_p, seed):
    params = SamplingParams.make(1, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    x = jnp.asarray(np.array(logits, np.float32))[None]
    probs = np.asarray(probabilities(x, params))[0]
    assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-5
    if top_k:
        assert (probs > 0).sum() <= top_k
    token, logprob = _sample_one(jax.random.split(jax.random.key(seed), 1), x, params)
    assert 0 <= int(token[0]) < 16 and np.isfinite(logprob[0])
    assert probs[int(token[0])] > 0


_sample_one = jax.jit(sample)


TIES = np.array([1.0, 0.5, 1.0, 0.5, 1.0, 0.0, 0.5, -1.0], np.float32)


@pytest.mark.parametrize(
    "case",
    [dict(top_k=2), dict(top_k=4), dict(top_p=0.5), dict(top_p=0.7, top_k=5), dict(min_p=0.6), dict(temperature=0.0)],
)
def test_ties_break_toward_lower_ids(case):
    got = np.asarray(probabilities(jnp.asarray(TIES)[None], SamplingParams.make(1, **case)))[0]
    np.testing.assert_allclose(got, reference(TIES, **case), atol=1e-6)


def test_large_flat_vocabulary_statistics():
    """300 nearly equal logits: top-p must keep hundreds of tokens, and the draw must still be exact."""
    v, n = 300, 60000
    logits = np.asarray(jax.random.normal(jax.random.key(5), (v,)) * 0.3, np.float32)
    for case in [dict(top_p=0.9), dict(top_k=150, temperature=0.8), dict(temperature=1.0)]:
        params = SamplingParams.make(n, **case)
        keys = jax.random.split(jax.random.key(9), n)
        tokens = np.asarray(_draw_many(keys, jnp.broadcast_to(jnp.asarray(logits), (n, v)), params))
        expected = reference(logits, **case)
        np.testing.assert_allclose(
            np.asarray(probabilities(jnp.asarray(logits)[None], SamplingParams.make(1, **case)))[0], expected, atol=1e-6
        )
        assert_matches_distribution(tokens, expected)


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-30, 30, width=32), min_size=16, max_size=16),
    top_p=st.floats(0.01, 0.999),
    temperature=st.sampled_from([0.5, 1.0, 2.0]),
)
@example(logits=[0.0] * 7 + [-1.7095140615530606e-40] + [0.0] * 8, top_p=0.5, temperature=0.5)  # equal probs
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, top_p, temperature):
    x = np.array(logits, np.float32)
    params = SamplingParams.make(1, temperature=temperature, top_p=top_p)
    kept = np.asarray(probabilities(jnp.asarray(x)[None], params))[0] > 0
    p = np.exp((x - x.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-(x / temperature), kind="stable")
    count = int(kept.sum())
    assert set(np.nonzero(kept)[0]) == set(order[:count])  # a prefix of the ranking
    mass = np.cumsum(p[order])
    assert mass[count - 1] >= top_p - 1e-5  # it reaches p ...
    assert count == 1 or mass[count - 2] < top_p + 1e-5  # ... and one token fewer would not


@settings(max_examples=40, deadline=None)
@given(logits=st.lists(_ANY_FLOAT, min_size=16, max_size=16), top_k=st.integers(0, 20), seed=st.integers(0, 99))
def test_greedy_is_the_argmax_of_the_processed_logits(logits, top_k, seed):
    from gpt_jax.decoding.penalties import Penalties, apply

    x = jnp.asarray(np.array(logits, np.float32))[None]
    pen = Penalties.make(1, 16, repetition_penalty=1.3, logit_bias={3: 2.0})
    counts = jnp.zeros((1, 16), jnp.int32).at[0, seed % 16].set(2)
    processed = apply(x, pen, counts > 0, counts, jnp.int32(1), jnp.array([-1]))
    token, _ = _sample_one(
        jax.random.split(jax.random.key(seed), 1), processed, SamplingParams.make(1, temperature=0.0, top_k=top_k)
    )
    assert int(token[0]) == int(np.argmax(np.asarray(processed)[0]))


@settings(max_examples=60, deadline=None)
@given(logits=st.lists(st.lists(_ANY_FLOAT, min_size=12, max_size=12), min_size=1, max_size=3))
@example(logits=[[1.0, 3.0, 3.0, -2.0] * 3])  # ties go to the lower id
def test_first_argmax_equals_numpy_argmax_on_sanitized_logits(logits):
    x = sanitize(jnp.asarray(np.array(logits, np.float32)))
    np.testing.assert_array_equal(np.asarray(first_argmax(x)), np.argmax(np.asarray(x), axis=-1))


def kept_by_definition(keys: np.ndarray, weights: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Token i is kept when the weight ranked above it (by key descending, ties by lower id) is below the budget."""
    out = np.zeros(keys.shape, bool)
    for b in range(keys.shape[0]):
        order = np.lexsort((np.arange(keys.shape[1]), -keys[b].astype(np.int64)))
        above = np.cumsum(weights[b, order].astype(np.int64)) - weights[b, order]
        out[b, order] = above < max(int(budget[b]), 1)
    return out


@pytest.mark.parametrize("vocab", [1, 7, 1000, 4001])
def test_the_cut_keeps_exactly_the_tokens_its_definition_keeps_in_either_arithmetic(vocab):
    from gpt_jax.decoding.sampling import _bisected_keep_top, _keep_top
    from gpt_jax.model.kernels import cpu_products

    rng = np.random.default_rng(vocab)
    rows = 40
    spread = rng.choice([3, 300, 2**32 - 1], size=(rows, 1))  # few distinct keys (many ties) up to all of them
    keys = (rng.integers(0, 2**32, (rows, vocab), dtype=np.uint64) % spread + (2**32 - spread) // 2).astype(np.uint32)
    keys[0] = 0x80000000  # one key for the whole row
    weights = rng.integers(0, 2**20, (rows, vocab), dtype=np.uint32) * (rng.random((rows, vocab)) < 0.7)
    weights[1] = 0  # a row of zero weights
    totals = weights.astype(np.int64).sum(-1)
    budget = np.minimum((rng.random(rows) * 1.2 * totals).astype(np.int64), 2**32 - 1)
    budget[2:6] = [0, 1, totals[4], totals[5] + 1]
    expected = kept_by_definition(keys, weights, budget)
    args = (jnp.asarray(keys), jnp.asarray(weights), jnp.asarray(budget.astype(np.uint32)))
    bisected = np.asarray(jax.jit(lambda k, w, b: _bisected_keep_top(k, w, jnp.maximum(b, 1)))(*args))
    np.testing.assert_array_equal(bisected, expected)
    if cpu_products.enabled():
        np.testing.assert_array_equal(np.asarray(jax.jit(_keep_top)(*args)), expected)
        single = [np.asarray(jax.jit(_keep_top)(*(a[r : r + 1] for a in args)))[0] for r in (0, 7, rows - 1)]
        np.testing.assert_array_equal(np.stack(single), expected[[0, 7, rows - 1]])  # a row alone: the same
