"""Speculative decoding emits plain decoding's tokens: greedy and seeded, for any k, with every feature in the mix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
from gpt_jax import DraftModel, Generator, InputError, PromptLookup
from gpt_jax.bench.reference import Reference
from gpt_jax.model.presets import GPT2_TINY, LLAMA_TINY

PROMPTS = [[1, 5, 9, 13, 5, 9, 13, 5], [1, 7], [3, 4, 5, 6, 7, 3, 4, 5, 6]]
MIXED = dict(  # one row greedy with min_new_tokens and a bias, one seeded top-p, one with penalties; n = 2; EOS ids
    temperature=[0.0, 1.0, 0.8],
    top_p=[1.0, 0.9, 1.0],
    repetition_penalty=[1.0, 1.0, 1.3],
    frequency_penalty=[0.0, 0.0, 0.4],
    min_new_tokens=[3, 0, 0],
    logit_bias=[{7: 2.0}, {}, {}],
    stop_ids=[[7, 7]],
    n=2,
    seed=3,
    top_logprobs=3,
)


def same(plain, spec):
    assert spec.token_ids == plain.token_ids and spec.finish_reasons == plain.finish_reasons
    for a, b in zip(plain.logprobs, spec.logprobs):
        assert np.allclose(a, b, atol=1e-5, rtol=0)
    if plain.top_logprobs is not None:
        for row_a, row_b in zip(plain.top_logprobs, spec.top_logprobs):
            assert [[i for i, _ in t] for t in row_a] == [[i for i, _ in t] for t in row_b]
            assert np.allclose([[v for _, v in t] for t in row_a], [[v for _, v in t] for t in row_b], atol=1e-5)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    config = {"llama": LLAMA_TINY, "gpt2": GPT2_TINY}[request.param]
    return Generator.from_config(config.replace(eos_ids=(2, 11)), key=4)


@pytest.fixture(scope="module")
def plain_mixed(model):
    return model.generate_ids(PROMPTS, max_new_tokens=24, **MIXED)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_prompt_lookup_emits_plain_decodings_tokens(model, plain_mixed, k):
    spec = model.generate_ids(PROMPTS, max_new_tokens=24, speculative=PromptLookup(num_tokens=k), **MIXED)
    same(plain_mixed, spec)
    assert sorted(set(plain_mixed.finish_reasons)) == ["eos", "length", "stop"]  # every way to end is in the mix
    assert len(spec.speculation["passes"]) == 6
    assert all(p <= len(t) for p, t in zip(spec.speculation["passes"], spec.token_ids))


def test_any_proposals_give_the_same_tokens_and_right_ones_save_passes(model):
    settings = dict(max_new_tokens=32, temperature=0.7, seed=11, ignore_eos=True)
    plain = model.generate_ids(PROMPTS, **settings)
    reference = np.zeros((4, 32), np.int32)  # the rows bucket to 4
    reference[:3] = plain.token_ids
    for accuracy in (1.0, 0.5, 0.0):
        spec = model.generate_ids(PROMPTS, speculative=Reference(reference, 4, accuracy, seed=2), **settings)
        same(plain, spec)
        passes = spec.speculation["passes"]
        if accuracy == 1.0:  # every proposal right: 5 tokens a pass, the first from the prefill
            assert passes == [1 + -(-31 // 5)] * 3 and spec.speculation["accepted"] == [31 - 7] * 3
        if accuracy == 0.0:
            assert passes == [32] * 3 and spec.speculation["accepted"] == [0] * 3


def test_a_row_stops_at_its_budget_inside_an_accepted_run(model):
    settings = dict(temperature=0.0, ignore_eos=True, max_new_tokens=[7, 3, 12])
    plain = model.generate_ids(PROMPTS, **settings)
    reference = np.zeros((4, 16), np.int32)
    for r, row in enumerate(model.generate_ids(PROMPTS, temperature=0.0, ignore_eos=True, max_new_tokens=16).token_ids):
        reference[r] = row  # right far beyond each budget
    spec = model.generate_ids(PROMPTS, speculative=Reference(reference, 8, 1.0), **settings)
    same(plain, spec)
    assert [len(t) for t in spec.token_ids] == [7, 3, 12] and spec.finish_reasons == ["length"] * 3


def test_a_second_call_with_other_settings_compiles_nothing(model):
    lookup = PromptLookup(num_tokens=3)
    model.generate_ids(PROMPTS, max_new_tokens=16, temperature=0.0, speculative=lookup)
    before = model.trace_count
    model.generate_ids(PROMPTS[::-1], max_new_tokens=16, temperature=0.9, seed=5, top_k=5, speculative=lookup)
    model.generate_ids(PROMPTS, max_new_tokens=16, temperature=0.0, speculative=PromptLookup(num_tokens=3))
    assert model.trace_count == before


def test_the_bundled_model_with_stop_strings_streaming_and_text():
    gen = gpt_jax.load()
    prompts = ["ROMEO:\nBut soft, what light", "KING HENRY:\nOnce more unto the breach, dear friends, once more"]
    settings = dict(max_new_tokens=40, seed=7, stop=["\n\n"])
    mixes = (dict(temperature=0.0), dict(temperature=0.9, presence_penalty=0.5))
    plains = [gen.generate(prompts, **settings, **mix) for mix in mixes]
    for i, k in enumerate((1, 2, 4, 8)):  # the two mixes in turn
        spec = gen.generate(prompts, **settings, **mixes[i % 2], speculative=PromptLookup(num_tokens=k))
        same(plains[i % 2], spec)
        assert spec.texts == plains[i % 2].texts
    lookup = PromptLookup(num_tokens=4)
    streamed = "".join(gen.stream(prompts[1], max_new_tokens=40, seed=7, temperature=0.0, speculative=lookup))
    assert streamed == gen.generate(prompts[1], max_new_tokens=40, seed=7, temperature=0.0).texts[0]


def test_a_draft_model_proposes_and_the_output_stays_plain():
    model = Generator.from_config(LLAMA_TINY.replace(eos_ids=(2, 11)), key=4)  # the draft path is family-blind
    plain_mixed = model.generate_ids(PROMPTS, max_new_tokens=24, **MIXED)
    draft = Generator.from_config(model.config.replace(n_layers=1), key=9)  # same vocabulary, other weights
    for k in (1, 3):
        same(plain_mixed, model.generate_ids(PROMPTS, max_new_tokens=24, speculative=DraftModel(draft, k), **MIXED))
    itself = model.generate_ids(PROMPTS, max_new_tokens=20, temperature=0.8, seed=2, speculative=DraftModel(model, 4))
    assert all(p <= 6 for p in itself.speculation["passes"])  # the model as its own draft: 5 tokens a pass
    stream = list(model.stream_ids(PROMPTS[0], max_new_tokens=20, temperature=0.0, speculative=DraftModel(draft, 3)))
    assert stream == model.generate_ids(PROMPTS[:1], max_new_tokens=20, temperature=0.0).token_ids[0]


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    from gpt_jax.decoding.speculation.prompt_lookup import lookup

    pad = 0
    tokens = jnp.asarray([[pad, pad, 5, 6, 7, 8, 5, 6, 9, 5, 6], [pad, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4]])
    end, pad_len = jnp.asarray([11, 8]), jnp.asarray([2, 1])
    got = lookup(tokens, end, pad_len, k=4, max_ngram=3).tolist()
    # row 0 ends "5 6": latest earlier "5 6" at 6 is followed by 9, 5, 6, then periodically 9
    # row 1 ends "4 4 4" (text 1 2 3 4 4 4 4): latest earlier "4 4 4" at 4 is followed by 4, then periodically 4
    assert got == [[9, 5, 6, 9], [4, 4, 4, 4]]
    assert lookup(tokens, jnp.asarray([4, 3]), pad_len, k=2, max_ngram=2).tolist() == [[-1, -1], [-1, -1]]


def test_the_command_line_speculates_with_the_same_output(capsys):
    from tests.conftest import run_cli

    argv = ["generate", "ROMEO:", "--seed", "4", "--max-new-tokens", "24", "--json"]
    code, plain, _ = run_cli(capsys, argv)
    assert code == 0
    assert run_cli(capsys, [*argv, "--prompt-lookup", "3"])[1] == plain
    code, _, err = run_cli(capsys, [*argv, "--prompt-lookup", "3", "--draft", "x"])
    assert code == 2 and "give one" in err


def test_bad_speculation_settings_are_typed_errors(model):
    with pytest.raises(InputError, match=r"num_tokens must be an integer in \[1, 16\]"):
        PromptLookup(num_tokens=0)
    with pytest.raises(InputError, match=r"max_ngram must be an integer in \[1, 8\]"):
        PromptLookup(max_ngram=True)
    with pytest.raises(InputError, match="speculative must be None, gpt_jax.PromptLookup"):
        model.generate_ids(PROMPTS, speculative="lookup")
    other = Generator.from_config(model.config.replace(vocab_size=96), key=1)
    with pytest.raises(InputError, match="vocabulary .96 ids. differs"):
        model.generate_ids(PROMPTS, speculative=DraftModel(other))
    with pytest.raises(InputError, match="DraftModel needs a gpt_jax.Generator"):
        DraftModel("a/dir")
    jax.clear_caches()


@pytest.fixture(scope="module")
def bundled():
    return gpt_jax.load()


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_wide_verification_passes_are_bit_identical_to_plain_decoding(bundled, temperature):
    """k = 9, 12 and 16 proposals make verification passes of 10, 13 and 17 positions; their logits must round as
    one-token decode steps do, so token ids and log-probabilities equal plain decoding's bit for bit."""
    prompt = "ROMEO:\nBut soft, what light through yonder window breaks? ROMEO:\nBut soft, what light"
    settings = dict(max_new_tokens=48, temperature=temperature, seed=5, ignore_eos=True)
    plain = bundled.generate([prompt], **settings)
    reference = np.zeros((1, 48), np.int32)
    reference[0] = plain.token_ids[0]
    for proposer in (Reference(reference, 16, 1.0, seed=1), PromptLookup(num_tokens=9), PromptLookup(num_tokens=12)):
        spec = bundled.generate([prompt], speculative=proposer, **settings)
        assert spec.token_ids == plain.token_ids, proposer
        assert np.array_equal(np.asarray(spec.logprobs[0]), np.asarray(plain.logprobs[0])), proposer
        assert sum(spec.speculation["passes"]) < 48, proposer  # proposals were taken: some passes were wide
