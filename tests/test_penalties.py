"""Penalties, logit bias and min_new_tokens against transformers' logits processors and exact statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import Generator, InputError
from gpt_jax.decoding.penalties import Penalties, apply, seen_in_prompt
from gpt_jax.decoding.sampling import SamplingParams, probabilities, sample
from gpt_jax.model.presets import LLAMA_TINY

from .conftest import assert_matches_distribution

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")

V = 40
rng = np.random.default_rng(0)
LOGITS = rng.normal(0, 2, (2, V)).astype(np.float32)
PROMPTS = np.array([[0, 0, 3, 5, 5, 7], [9, 10, 11, 12, 13, 3]], np.int32)  # row 0 has 2 pad slots (id 0)
PAD_LEN = np.array([2, 0], np.int32)
GENERATED = [[5, 20, 20, 21], [3, 3, 3, 30]]


def ours(**kw):
    counts = np.zeros((2, V), np.int32)
    for r, toks in enumerate(GENERATED):
        for t in toks:
            counts[r, t] += 1
    pen = Penalties.make(2, V, **kw)
    seen = seen_in_prompt(jnp.asarray(PROMPTS), jnp.asarray(PAD_LEN), V)
    eos = jnp.array([2, -1], jnp.int32)
    return np.asarray(apply(jnp.asarray(LOGITS), pen, seen, jnp.asarray(counts), jnp.int32(4), eos))


def hf_input_ids():
    rows = [list(PROMPTS[0, 2:]) + GENERATED[0], list(PROMPTS[1]) + GENERATED[1]]
    return rows


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    proc = lp.RepetitionPenaltyLogitsProcessor(penalty=penalty)
    for r, ids in enumerate(hf_input_ids()):  # one row at a time: no padding in HF's view
        ref = proc(torch.tensor([ids]), torch.tensor(LOGITS[r : r + 1])).numpy()[0]
        np.testing.assert_allclose(ours(repetition_penalty=penalty)[r], ref, rtol=1e-6)


def test_logit_bias_matches_sequence_bias():
    bias = {4: 5.0, 17: -3.5, 39: 100.0}
    proc = lp.SequenceBiasLogitsProcessor(sequence_bias=[[[k], v] for k, v in bias.items()])
    got = ours(logit_bias=bias)
    for r, ids in enumerate(hf_input_ids()):
        ref = proc(torch.tensor([ids]), torch.tensor(LOGITS[r : r + 1])).numpy()[0]
        np.testing.assert_allclose(got[r], ref, rtol=1e-6)


def test_min_new_tokens_matches_transformers():
    ref = []
    for r, ids in enumerate(hf_input_ids()):  # 4 generated < 6: EOS masked
        proc = lp.MinNewTokensLengthLogitsProcessor(
            prompt_length_to_skip=len(ids) - 4, min_new_tokens=6, eos_token_id=2
        )
        ref.append(proc(torch.tensor([ids]), torch.tensor(LOGITS[r : r + 1])).numpy()[0])
    ref = np.stack(ref)
    got = ours(min_new_tokens=6)
    assert np.isneginf(ref[:, 2]).all() and (got[:, 2] <= -1e29).all()
    keep = np.ones(V, bool)
    keep[2] = False
    np.testing.assert_allclose(got[:, keep], ref[:, keep], rtol=1e-6)
    np.testing.assert_allclose(ours(min_new_tokens=4), LOGITS, rtol=1e-6)  # reached: nothing masked


def test_presence_and_frequency_follow_the_openai_formula():
    got = ours(presence_penalty=0.5, frequency_penalty=0.25)
    expected = LOGITS.copy()
    for r, toks in enumerate(GENERATED):
        for t in set(toks):
            expected[r, t] -= 0.5 + 0.25 * toks.count(t)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_prompt_padding_is_not_penalized():
    got = ours(repetition_penalty=2.0)
    assert got[0, 0] == LOGITS[0, 0]  # id 0 fills row 0's padding only
    assert got[1, 9] != LOGITS[1, 9]


def test_sampled_frequencies_with_penalties_match_the_exact_distribution():
    n = 30000
    processed = ours(repetition_penalty=1.5, presence_penalty=0.3, frequency_penalty=0.4, logit_bias={1: 2.0})
    for r in range(2):
        x = jnp.broadcast_to(jnp.asarray(processed[r]), (n, V))
        params = SamplingParams.make(n, temperature=0.9, top_p=0.95)
        tokens = jax.jit(sample)(jax.random.split(jax.random.key(r), n), x, params)[0]
        expected = np.asarray(
            probabilities(jnp.asarray(processed[r : r + 1]), SamplingParams.make(1, temperature=0.9, top_p=0.95))
        )[0]
        assert_matches_distribution(np.asarray(tokens), expected.astype(np.float64) / expected.sum())


@pytest.fixture(scope="module")
def gen():
    return Generator.from_config(LLAMA_TINY, key=jax.random.key(2))


def test_generation_with_penalties(gen):
    out = gen.generate_ids([[1, 2, 3]], max_new_tokens=30, temperature=0.0, frequency_penalty=2.0, ignore_eos=True)
    plain = gen.generate_ids([[1, 2, 3]], max_new_tokens=30, temperature=0.0, ignore_eos=True)
    assert len(set(out.token_ids[0])) > len(set(plain.token_ids[0]))
    biased = gen.generate_ids([[1, 2, 3]], max_new_tokens=30, temperature=0.0, logit_bias={42: 100.0}, ignore_eos=True)
    assert biased.token_ids[0] == [42] * 30
    assert gen.trace_count == 1  # penalties are traced values


def test_min_new_tokens_holds_eos_back(gen):
    row = gen.generate_ids(
        [[1, 2, 3]], max_new_tokens=16, temperature=1.0, top_p=1.0, seed=1, ignore_eos=True
    ).token_ids[0]
    g = Generator(gen.config.replace(eos_ids=(row[0],)), gen.params)
    stopped = g.generate_ids([[1, 2, 3]], max_new_tokens=16, temperature=1.0, top_p=1.0, seed=1)
    assert stopped.token_ids[0] == [row[0]] and stopped.finish_reasons == ["eos"]
    held = g.generate_ids([[1, 2, 3]], max_new_tokens=16, temperature=1.0, top_p=1.0, seed=1, min_new_tokens=5)
    assert row[0] not in held.token_ids[0][:5]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be float in \(0.0, 100.0\]"),
        ({"presence_penalty": 3.0}, r"presence_penalty must be float in \[-2.0, 2.0\]"),
        ({"frequency_penalty": -2.5}, r"frequency_penalty must be float in \[-2.0, 2.0\]"),
        ({"logit_bias": {64: 1.0}}, r"logit_bias keys must be token ids in \[0, vocab_size=64\)"),
        ({"logit_bias": {3: 500}}, r"logit_bias values must be numbers in \[-100, 100\]"),
        ({"logit_bias": [1, 2]}, "logit_bias must be a dict"),
        ({"min_new_tokens": -1}, r"min_new_tokens must be int in \[0, 128\]"),
    ],
)
def test_bad_penalty_settings(gen, kw, message):
    with pytest.raises(InputError, match=message):
        gen.generate_ids([[1, 2]], **kw)
