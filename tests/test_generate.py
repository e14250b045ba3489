"""The public pipeline on tiny random models: invariances, seeds, compilation count and input checking."""

import jax
import numpy as np
import pytest

from gpt_jax import GenerationSettings, Generator, InputError, TokenizerError
from gpt_jax.decoding.programs import cache_length
from gpt_jax.model.config import ConfigError
from gpt_jax.model.presets import GPT2_TINY, LLAMA_TINY

PROMPTS = [[1, 5, 9, 13, 17, 21, 25], [1, 7], [1, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46]]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def gen(request):
    cfg = {"gpt2": GPT2_TINY, "llama": LLAMA_TINY}[request.param]
    return Generator.from_config(cfg, key=jax.random.key(11))


def test_greedy_batch_invariance(gen):
    together = gen.generate_ids(PROMPTS, max_new_tokens=20, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        alone = gen.generate_ids([prompt], max_new_tokens=20, temperature=0.0, ignore_eos=True)
        assert alone.token_ids[0] == together.token_ids[i]
        np.testing.assert_allclose(alone.logprobs[0], together.logprobs[i], atol=1e-5)


def test_seeds(gen):
    kw = dict(max_new_tokens=24, temperature=1.0, top_p=1.0, ignore_eos=True)
    a = gen.generate_ids(PROMPTS, seed=3, **kw)
    b = gen.generate_ids(PROMPTS, seed=3, **kw)
    c = gen.generate_ids(PROMPTS, seed=4, **kw)
    assert a.token_ids == b.token_ids and a.seed == 3
    assert a.token_ids != c.token_ids
    # a row's tokens do not depend on its batch-mates or the batch size
    alone = gen.generate_ids([PROMPTS[2]], seed=3, row_seeds=[2], **kw)
    assert alone.token_ids[0] == a.token_ids[2]
    other_mates = gen.generate_ids([PROMPTS[0], [1, 2, 3], [1, 60, 61]], seed=3, **kw)
    assert other_mates.token_ids[0] == a.token_ids[0]
    # max_new_tokens=n is a prefix of m > n
    short = gen.generate_ids(PROMPTS, seed=3, **{**kw, "max_new_tokens": 9})
    assert all(s == t[:9] for s, t in zip(short.token_ids, a.token_ids))


def test_seed_none_is_recorded_and_repeatable(gen):
    first = gen.generate_ids(PROMPTS[:1], max_new_tokens=8, temperature=1.0, ignore_eos=True)
    again = gen.generate_ids(PROMPTS[:1], max_new_tokens=8, temperature=1.0, ignore_eos=True, seed=first.seed)
    assert first.token_ids == again.token_ids


def test_no_recompilation_within_a_bucket():
    g = Generator.from_config(LLAMA_TINY, key=jax.random.key(0))
    g.generate_ids([[1, 2, 3]], max_new_tokens=10, temperature=0.0)
    assert g.trace_count == 1
    g.generate_ids(
        [[1, 2, 3, 4, 5, 6, 7, 8, 9]],
        max_new_tokens=13,
        temperature=0.7,
        top_k=5,
        top_p=0.8,
        min_p=0.1,
        seed=9,
        ignore_eos=True,
    )
    assert g.trace_count == 1
    g.generate_ids([list(range(1, 20))], max_new_tokens=10)  # next prompt bucket (32): one new program
    assert g.trace_count == 2


@pytest.mark.parametrize("rows", [1, 4])
def test_compiled_decode_never_copies_the_cache(gen, rows):
    """The optimized program writes each layer's cache in place: no copy of a cache-shaped array anywhere
    (a regression here costs ~10% of a batch-1 step on CPU; see kv_cache.py)."""
    prep = gen.prepare([[1, 2, 3]] * rows, GenerationSettings(max_new_tokens=8, temperature=0.0))
    lowered = gen.programs.generate.lower(gen.params, prep.inputs, buffer=prep.buffer, top_logprobs=0)
    hlo = lowered.compile().as_text()
    tokens = prep.inputs.tokens
    cfg, slots = gen.config, cache_length(tokens.shape[1], prep.buffer)
    r = tokens.shape[0] * cfg.n_kv_heads
    shapes = [f"[{r},{cfg.head_dim},{slots}]", f"[{r},{slots},{cfg.head_dim}]"]
    copies = [line for line in hlo.splitlines() if " copy(" in line and any(s in line.split("=")[1] for s in shapes)]
    assert hlo.count(f"[{r},{cfg.head_dim},{slots}]") > 0, "cache shape not found: the test is out of date"
    assert copies == []


def test_finish_reasons_and_lengths(gen):
    out = gen.generate_ids(PROMPTS, max_new_tokens=[3, 5, 7], temperature=0.0, ignore_eos=True)
    assert [len(t) for t in out.token_ids] == [3, 5, 7]
    assert out.finish_reasons == ["length"] * 3 and out.steps == 7
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=1.0, seed=0)
    row = gen.generate_ids(PROMPTS[2:], ignore_eos=True, **kw).token_ids[0]
    k = next(i for i in range(1, len(row)) if row[i] not in row[:i])  # a token first generated at index k
    g = Generator(gen.config.replace(eos_ids=(row[k],)), gen.params)
    stopped = g.generate_ids(PROMPTS[2:], **kw)
    assert stopped.token_ids[0] == row[: k + 1] and stopped.finish_reasons == ["eos"] and stopped.steps == k + 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "prompts must be a non-empty list"),
        (dict(prompts=[[]]), "prompt 0 is empty"),
        (dict(prompts=[[1, 64]]), r"outside \[0, vocab_size=64\)"),
        (dict(prompts=[[1, -1]]), r"outside \[0, vocab_size=64\)"),
        (dict(prompts="abc"), "prompts must be a non-empty list"),
        (dict(temperature=-0.5), r"temperature must be float in \[0.0, 1000000.0\], got -0.5"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(top_p=0.0), r"top_p must be float in \(0.0, 1.0\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be float in \(0.0, 1.0\]"),
        (dict(top_k=-1), r"top_k must be int in \[0, 64\], got -1"),
        (dict(top_k=2.5), "top_k must be int"),
        (dict(min_p=1.5), r"min_p must be float in \[0.0, 1.0\]"),
        (dict(max_new_tokens=0), r"max_new_tokens must be int in \[1, 128\], got 0"),
        (dict(max_new_tokens=125), "that is 129, more than the model.s context of 128 tokens"),
        (dict(temperature=[0.5, 0.5]), "temperature must be a scalar or a list of 1 values"),
        (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*32\)"),
        (dict(seed="x"), "seed must be an integer"),
        (dict(ignore_eos="yes"), "ignore_eos must be True or False"),
    ],
)
def test_bad_input_is_a_typed_error_before_compiling(kwargs, message):
    g = Generator.from_config(LLAMA_TINY, key=jax.random.key(0))
    kwargs = {"prompts": [[1, 2, 3, 4]], **kwargs}
    with pytest.raises(InputError, match=message):
        g.generate_ids(**kwargs)
    assert g.trace_count == 0


def test_text_methods_need_a_tokenizer_and_strings(small_tokenizer):
    g = Generator.from_config(LLAMA_TINY, key=jax.random.key(0))
    with pytest.raises(TokenizerError, match="without a tokenizer"):
        g.generate("hi")
    gt = Generator.from_config(LLAMA_TINY.replace(vocab_size=320, pad_id=3), small_tokenizer, jax.random.key(0))
    with pytest.raises(InputError, match="prompt 1 must be a string"):
        gt.generate(["ok", 5])
    with pytest.raises(InputError, match="tokenizer vocab_size 320 != config vocab_size 64"):
        Generator.from_config(LLAMA_TINY, small_tokenizer)


def test_heads_that_do_not_divide_are_a_config_error():
    with pytest.raises(ConfigError, match="n_heads=3 must divide d_model=32"):
        LLAMA_TINY.replace(n_heads=3, n_kv_heads=3)


def test_generate_text_matches_generate_ids(small_tokenizer):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    g = Generator.from_config(cfg, small_tokenizer, jax.random.key(5))
    out = g.generate(["ROMEO:", "JULIET: O"], max_new_tokens=12, seed=0, ignore_eos=True)
    ids = g.generate_ids(
        [small_tokenizer.encode("ROMEO:"), small_tokenizer.encode("JULIET: O")],
        max_new_tokens=12,
        seed=0,
        ignore_eos=True,
    )
    assert out.token_ids == ids.token_ids
    for prompt, text, new in zip(["ROMEO:", "JULIET: O"], out.texts, out.token_ids):
        full = small_tokenizer.decode(small_tokenizer.encode(prompt) + new)
        assert prompt + text == full


def test_score_matches_a_manual_forward(small_tokenizer):
    from gpt_jax.model.transformer import forward

    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    g = Generator.from_config(cfg, small_tokenizer, jax.random.key(5))
    texts = ["To be, or not to be", "Ay"]
    result = g.score(texts)
    for text, ll, n in zip(texts, result.log_likelihood, result.num_tokens):
        ids = np.array([small_tokenizer.encode(text)])
        logp = jax.nn.log_softmax(forward(cfg, g.params, ids)[0, :-1])
        assert n == ids.shape[1] - 1
        assert np.isclose(ll, float(logp[np.arange(n), ids[0, 1:]].sum()), atol=1e-4)


def test_stream_equals_generate(small_tokenizer):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    g = Generator.from_config(cfg, small_tokenizer, jax.random.key(8))
    for kw in ({"seed": 4, "temperature": 1.0, "top_p": 1.0}, {"temperature": 0.0}, {"seed": 1, "top_k": 20}):
        pieces = list(g.stream("ROMEO:", max_new_tokens=40, ignore_eos=True, **kw))
        text = g.generate("ROMEO:", max_new_tokens=40, ignore_eos=True, **kw).texts[0]
        assert "".join(pieces) == text and len(pieces) > 1
        assert all("\ufffd" not in p or "\ufffd" in text for p in pieces)
    ids = small_tokenizer.encode("JULIET:")
    streamed = list(g.stream_ids(ids, max_new_tokens=12, seed=2, ignore_eos=True))
    assert streamed == g.generate_ids([ids], max_new_tokens=12, seed=2, ignore_eos=True).token_ids[0]


def test_stream_stops_at_eos(small_tokenizer):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    g = Generator.from_config(cfg, small_tokenizer, jax.random.key(8))
    ids = small_tokenizer.encode("A")
    full = g.generate_ids([ids], max_new_tokens=20, seed=3, temperature=1.0, top_p=1.0, ignore_eos=True).token_ids[0]
    k = next(i for i in range(1, len(full)) if full[i] not in full[:i])
    g2 = Generator(cfg.replace(eos_ids=(full[k],)), g.params, small_tokenizer)
    assert list(g2.stream_ids(ids, max_new_tokens=20, seed=3, temperature=1.0, top_p=1.0)) == full[: k + 1]


@pytest.fixture(scope="module")
def text_gen(small_tokenizer):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    return Generator.from_config(cfg, small_tokenizer, jax.random.key(8))


def test_stop_strings(text_gen):
    kw = {"max_new_tokens": 60, "seed": 4, "temperature": 1.0, "top_p": 1.0, "ignore_eos": True}
    full = text_gen.generate("ROMEO:", **kw).texts[0]
    assert len(full) > 12
    stop = full[8:11]  # a stop string taken from the middle of the free-running text
    first = full.find(stop)
    out = text_gen.generate("ROMEO:", stop=[stop, "never appears"], **kw)
    assert out.texts[0] == full[:first] and out.finish_reasons == ["stop"]
    assert text_gen.tokenizer.decode(text_gen.tokenizer.encode("ROMEO:") + out.token_ids[0]).startswith(
        "ROMEO:" + out.texts[0]
    )
    assert "".join(text_gen.stream("ROMEO:", stop=[stop, "never appears"], **kw)) == out.texts[0]
    unaffected = text_gen.generate("ROMEO:", stop=["never appears"], **kw)
    assert unaffected.texts[0] == full and unaffected.finish_reasons == ["length"]


def test_stop_string_split_across_tokens(text_gen):
    """The stop string straddles two generated tokens whose boundary differs from the string's own encoding."""
    tok = text_gen.tokenizer
    kw = {"max_new_tokens": 60, "seed": 11, "temperature": 1.0, "top_p": 1.0, "ignore_eos": True}
    ids = text_gen.generate_ids([tok.encode("JULIET:")], **kw).token_ids[0]
    pieces = [tok.decode(ids[: k + 1])[len(tok.decode(ids[:k])) :] for k in range(len(ids))]
    k = next(i for i in range(3, len(ids) - 1) if pieces[i] and pieces[i + 1])
    stop = pieces[k][-1] + pieces[k + 1][0]  # last character of one token + first of the next
    if tok.encode(stop)[1:] == [ids[k], ids[k + 1]]:
        pytest.skip("the straddling string happens to be its own encoding")
    text = "".join(pieces)
    out = text_gen.generate("JULIET:", stop=stop, **kw)
    assert out.texts[0] == text[: text.find(stop)] and out.finish_reasons == ["stop"]


def test_generate_ids_stop_sequences(text_gen):
    kw = {"max_new_tokens": 30, "seed": 4, "temperature": 1.0, "top_p": 1.0, "ignore_eos": True}
    ids = text_gen.generate_ids([[1, 50, 60]], **kw).token_ids[0]
    out = text_gen.generate_ids([[1, 50, 60]], stop_ids=[ids[5:7]], **kw)
    end = next(i for i in range(1, len(ids)) if ids[i - 1 : i + 1] == ids[5:7]) + 1
    assert out.token_ids[0] == ids[:end] and out.finish_reasons == ["stop"]
    with pytest.raises(InputError, match="at most 16 are allowed"):
        text_gen.generate_ids([[1]], stop_ids=[list(range(4, 24))])
    with pytest.raises(InputError, match="stop must be a non-empty string"):
        text_gen.generate("A", stop=[""])


def test_n_samples_per_prompt(text_gen):
    kw = {"max_new_tokens": 12, "seed": 3, "temperature": 1.0, "top_p": 1.0, "ignore_eos": True}
    out = text_gen.generate(["ROMEO:", "JULIET:"], n=3, **kw)
    assert len(out.texts) == 6 and len(set(out.texts[:3])) == 3
    # each sample has its own key: row r*n+j, the same as asking for that row directly
    alone = text_gen.generate(["JULIET:"], row_seeds=[4], **kw)
    assert alone.texts[0] == out.texts[4]


def test_top_logprobs(text_gen):
    out = text_gen.generate_ids([[1, 40, 41]], max_new_tokens=6, temperature=0.0, top_logprobs=3, ignore_eos=True)
    for token, lp, alts in zip(out.token_ids[0], out.logprobs[0], out.top_logprobs[0]):
        assert len(alts) == 3 and alts[0] == (token, pytest.approx(lp, abs=1e-5))  # greedy: the best alternative
        assert alts[0][1] >= alts[1][1] >= alts[2][1]
    with pytest.raises(InputError, match=r"top_logprobs must be an integer in \[0, 20\]"):
        text_gen.generate_ids([[1]], top_logprobs=50)
    with pytest.raises(InputError, match=r"n must be an integer in \[1, 64\]"):
        text_gen.generate_ids([[1]], n=0)


def test_score_long_text_in_windows(text_gen):
    text = "To be, or not to be, that is the question. " * 30
    ids = text_gen.tokenizer.encode(text)
    assert len(ids) > 2 * text_gen.config.max_seq_len
    result = text_gen.score(text)
    assert result.num_tokens == [len(ids) - 1]  # every token after BOS is scored once
    assert np.isfinite(result.log_likelihood[0]) and result.log_likelihood[0] < 0
