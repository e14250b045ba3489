"""Property: whatever values of whatever types the keywords of `generate_ids` and `generate` get, nothing but a
`GptJaxError` escapes (or a result comes back)."""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt_jax import GenerationResult, GenerationSettings, Generator, GptJaxError
from gpt_jax.model.presets import LLAMA_TINY

KEYWORDS = [f.name for f in dataclasses.fields(GenerationSettings)] + ["max_tokens", "foo"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-2, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=2),
    st.text(max_size=4),
    st.binary(max_size=3),
    st.builds(np.float32, st.floats(min_value=0, max_value=2, width=32)),
    st.builds(np.int64, st.integers(min_value=-3, max_value=40)),
    st.just(np.array(0.5)),
    st.just(np.zeros((2, 2))),
    st.just(object()),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.lists(st.lists(st.integers(min_value=-2, max_value=70), max_size=3), max_size=2),
    st.dictionaries(st.one_of(st.integers(min_value=-2, max_value=70), st.text(max_size=2)), SCALARS, max_size=2),
)
CALLS = st.dictionaries(st.sampled_from(KEYWORDS), VALUES, max_size=3)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def gen(small_tokenizer):
    return Generator.from_config(LLAMA_TINY.replace(vocab_size=320, pad_id=3), small_tokenizer, jax.random.key(0))


def call_or_typed_error(fn, *args, **kwargs):
    try:
        out = fn(*args, **kwargs)
    except GptJaxError:
        return None
    assert isinstance(out, GenerationResult)
    return out


@pytest.mark.slow
@PROPERTY
@given(kwargs=CALLS)
def test_generate_ids_raises_nothing_but_typed_errors(gen, kwargs):
    kwargs.setdefault("max_new_tokens", 3)  # keep the successful calls short
    call_or_typed_error(gen.generate_ids, [[1, 5, 9]], **kwargs)


@pytest.mark.slow
@PROPERTY
@given(kwargs=CALLS, prompt=st.one_of(st.text(max_size=6), st.lists(st.text(max_size=3), max_size=2), SCALARS))
def test_generate_raises_nothing_but_typed_errors(gen, kwargs, prompt):
    kwargs.setdefault("max_new_tokens", 3)
    out = call_or_typed_error(gen.generate, prompt, **kwargs)
    if out is not None:
        assert all(isinstance(t, str) for t in out.texts)
