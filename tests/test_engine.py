"""The continuous-batching engine: each request gives what `generate_ids` gives it, alone or among others; long
prompts are prefilled in chunks between decode dispatches; a failing request ends alone; one decode program."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

import gpt_jax
from gpt_jax.model.kernels import cpu_products
from gpt_jax import InputError
from gpt_jax.serving.engine import Engine, Observer
from tests.serving import run_requests


@pytest.fixture(scope="module")
def bundled():
    return gpt_jax.load()


@pytest.fixture(scope="module")
def engine(bundled):
    """8 slots, 4 steps per dispatch, shared by the tests of this module (so compiled once)."""
    engine = Engine(bundled, slots_count=8, steps_per_dispatch=4)
    yield engine
    engine.close()


def mixed_items(gen, count: int, seed: int = 0) -> list:
    """`count` (prompt ids, settings) pairs of mixed prompt lengths, budgets and sampling settings."""
    rng = random.Random(seed)
    words = "the king doth wake tonight and all his court is merry with wine and song".split()
    items = []
    for i in range(count):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        settings = {
            "seed": rng.randrange(2**32),
            "max_new_tokens": rng.randint(1, 48),
            "temperature": rng.choice([0.0, 0.7, 1.0, 1.5]),
            "top_p": rng.choice([1.0, 0.9, 0.5]),
            "top_k": rng.choice([0, 0, 5, 40]),
            "n": rng.choice([1, 1, 1, 2, 3]),
        }
        if i % 5 == 1:
            settings.update(presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.2)
        if i % 7 == 2:
            settings.update(logit_bias={5: 3.0, 17: -100.0}, min_new_tokens=min(4, settings["max_new_tokens"]))
        if i % 6 == 3:
            settings["stop_ids"] = [gen.tokenizer.encode(" the", add_special_tokens=False)]
        if i % 4 == 0:
            settings["top_logprobs"] = 3
        items.append((gen.tokenizer.encode(prompt), settings))
    return items


def assert_same_as_generate(gen, items, results) -> None:
    """Each request's tokens, log-probabilities and alternatives are what `generate_ids` gives the prompt alone: the
    same bits where the CPU kernel makes the prefill exact (however the server chunked or padded the prompt, and
    whatever its slots held), else within 1e-4."""
    exact = cpu_products.enabled() and gen.programs.arithmetic == "exact"
    for (ids, settings), got in zip(items, results):
        want = gen.generate_ids([ids], **settings)
        assert got["tokens"] == want.token_ids, settings
        assert got["finish"] == want.finish_reasons, settings
        if exact:
            assert got["logprobs"] == want.logprobs, settings
        for a, b in zip(got["logprobs"], want.logprobs):
            np.testing.assert_allclose(a, b, atol=1e-4)
        if settings.get("top_logprobs"):
            if exact:
                assert got["top"] == want.top_logprobs, settings
            assert [[[i for i, _ in alts] for alts in row] for row in got["top"]] == [
                [[i for i, _ in alts] for alts in row] for row in want.top_logprobs
            ]


def test_requests_give_what_generate_gives_alone_or_among_others(bundled, engine):
    items = mixed_items(bundled, 20)
    together = run_requests(engine, items)
    assert_same_as_generate(bundled, items[::3], together[::3])
    for k in (1, 8, 14, 19):  # alone: the same bits, however full the slots were
        alone = run_requests(engine, [items[k]])[0]
        assert alone["tokens"] == together[k]["tokens"] and alone["logprobs"] == together[k]["logprobs"]
    assert engine.compiled_decode_programs == 2  # with and without recorded alternatives
    assert engine.busy == 0 and engine.queued == 0


class Trace(Observer):
    def __init__(self):
        self.events = []

    def on_dispatch(self, busy, queued):
        self.events.append(("decode", busy))

    def on_prefill(self, tokens, prompts=1):
        self.events.append(("prefill", tokens))


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(bundled):
    trace = Trace()
    engine = Engine(bundled, slots_count=2, chunk=16, steps_per_dispatch=1, observer=trace)
    try:
        long_prompt = bundled.tokenizer.encode("the king doth wake tonight " * 30)[:150]
        short = (bundled.tokenizer.encode("ROMEO:"), {"max_new_tokens": 60, "min_new_tokens": 60, "temperature": 0.0})
        items = [short, (long_prompt, {"max_new_tokens": 20, "temperature": 0.0, "seed": 1})]
        results = run_requests(engine, items)
        assert_same_as_generate(bundled, items, results)  # chunked prefill: same greedy tokens, logprobs to 1e-4
        chunks = [i for i, (kind, _) in enumerate(trace.events) if kind == "prefill" and i > 0]
        assert len(chunks) >= 8  # 150 tokens: 10 chunks of 16
        between = [trace.events[a + 1 : b] for a, b in zip(chunks, chunks[1:])]
        assert all(any(kind == "decode" and busy >= 1 for kind, busy in gap) for gap in between)
    finally:
        engine.close()


def test_a_failing_request_ends_alone(bundled, engine, monkeypatch):
    insert = engine.programs.insert
    bad = bundled.tokenizer.encode("poison")

    def failing(state, slot, prompt, *rest):
        if list(np.asarray(prompt)[-len(bad) :]) == bad:
            raise RuntimeError("injected failure")
        return insert(state, slot, prompt, *rest)

    monkeypatch.setattr(engine.programs, "insert", failing)
    items = mixed_items(bundled, 6, seed=3)
    items.insert(2, (bad, {"max_new_tokens": 8}))
    results = run_requests(engine, items)
    assert isinstance(results[2].get("error"), RuntimeError)
    rest = [r for i, r in enumerate(results) if i != 2]
    assert all("error" not in r for r in rest)
    assert_same_as_generate(bundled, items[:2], rest[:2])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"slots_count": 0}, "slots must be an integer in [1, 1024]"),
        ({"chunk": 100}, "chunk must be a power of two"),
        ({"max_len": 10_000}, "max_len must be an integer in [2, 256]"),
        ({"steps_per_dispatch": 0}, "steps_per_dispatch must be an integer >= 1"),
        ({"max_queue": -1}, "max_queue must be >= 0"),
        ({"prefill_together": 0}, "prefill_together must be an integer >= 1"),
    ],
)
def test_bad_engine_options_are_typed_errors(bundled, options, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Engine(bundled, **options)


def test_requests_the_slots_cannot_hold_are_refused_before_they_queue(bundled):
    engine = Engine(bundled, slots_count=2, max_len=64)
    try:
        settings = gpt_jax.GenerationSettings(max_new_tokens=40)
        with pytest.raises(InputError, match="more than the server's context of 64 tokens"):
            engine.prepare(list(range(4, 34)), settings)
        with pytest.raises(InputError, match="n must be at most the server's 2 slots"):
            engine.prepare([5, 6], gpt_jax.GenerationSettings(n=3))
    finally:
        engine.close()


def test_a_slots_tokens_do_not_depend_on_the_attended_bucket_or_the_other_slots():
    """A dispatch attends to the smallest bucket (256 * 2**i positions) that holds every live slot: a short request
    alone is decoded over 256 positions, beside a 700-token prompt over 1024, with a 4096-position slot both
    times; its tokens and log-probabilities are the same bits, and those of `generate_ids` alone."""
    from gpt_jax.model.presets import PRESETS
    from gpt_jax.serving import slots

    assert [slots.attend_bucket(r, 4096) for r in (1, 256, 257, 700, 1100, 3000)] == [256, 256, 512, 1024, 2048, 4096]
    config = PRESETS["llama-tiny"].replace(vocab_size=300, max_seq_len=4096, d_model=64, n_heads=4, n_kv_heads=2)
    gen = gpt_jax.Generator.from_config(config, key=5)
    rng = np.random.default_rng(1)
    short = (rng.integers(3, 300, 20).tolist(), {"max_new_tokens": 40, "temperature": 0.9, "seed": 7})
    long = (rng.integers(3, 300, 700).tolist(), {"max_new_tokens": 30, "temperature": 0.9, "seed": 8})
    engine = Engine(gen, slots_count=4, max_len=4096, chunk=256, steps_per_dispatch=4)
    try:
        alone = run_requests(engine, [short])[0]
        together = run_requests(engine, [long, short, long])[1]
        assert engine.compiled_decode_programs >= 2  # the buckets were used: more than one program
    finally:
        engine.close()
    assert alone["tokens"] == together["tokens"] and alone["logprobs"] == together["logprobs"]
    want = gen.generate_ids([short[0]], **short[1])
    assert alone["tokens"] == want.token_ids and np.allclose(alone["logprobs"][0], want.logprobs[0], atol=1e-5)


class Passes(Observer):
    """The number of prompts in each prefill pass."""

    def __init__(self):
        self.prompts = []

    def on_prefill(self, tokens, prompts=1):
        self.prompts.append(prompts)


def short_items(gen, lengths, seed: int) -> list:
    rng = np.random.default_rng(seed)
    items = []
    for i, length in enumerate(lengths):
        settings = {"max_new_tokens": int(rng.integers(4, 20)), "temperature": [0.0, 0.8, 1.2][i % 3], "seed": i}
        if i % 4 == 1:
            settings.update(n=2, top_logprobs=2)
        if i % 4 == 2:
            settings.update(top_k=20, presence_penalty=0.5)
        items.append((rng.integers(4, gen.config.vocab_size, length).tolist(), settings))
    return items


def test_short_prompts_that_arrive_together_share_one_prefill_pass_and_keep_the_bits_of_alone(bundled):
    """Eight short prompts of one bucket (16 positions, 10 rows with n = 2) and three of the next arrive at an idle
    13-slot engine: where the prefill is exact (the CPU kernel, float32) the eight are prefilled in one pass, two
    of the others in the next turn's (the budget of a turn with slots decoding: 64 tokens; the slots are then
    full), the last alone; every request gets the tokens and log-probabilities it gets alone, and that
    `generate_ids` gives it."""
    items = short_items(bundled, [9, 12, 16, 10, 11, 14, 15, 13, 20, 25, 31], seed=4)
    passes = Passes()
    engine = Engine(bundled, slots_count=13, steps_per_dispatch=4, observer=passes)
    alone_engine = Engine(bundled, slots_count=2, steps_per_dispatch=4, prefill_together=1)
    engine.prefiller.groups.compile(8, 16)  # else the first burst goes one by one while they compile (below)
    engine.prefiller.groups.compile(2, 32)
    try:
        together = run_requests(engine, items)
        alone = [run_requests(alone_engine, [item])[0] for item in items]
    finally:
        engine.close()
        alone_engine.close()
    if engine.prefiller.exact_together:
        assert passes.prompts == [8, 2, 1]
    else:
        assert set(passes.prompts) == {1}
    for got, want in zip(together, alone):
        assert got["tokens"] == want["tokens"] and got["logprobs"] == want["logprobs"]
        assert got["top"] == want["top"]
    assert_same_as_generate(bundled, items, together)


def test_a_group_waits_for_no_compilation(bundled):
    """A burst meets a program not compiled yet: its first prompt is prefilled alone while the program compiles in
    the background, and the same burst later shares one pass (4 prompts, 5 rows), with the same bits."""
    passes = Passes()
    engine = Engine(bundled, slots_count=5, steps_per_dispatch=4, observer=passes)
    try:
        items = short_items(bundled, [9, 10, 11, 12], seed=9)
        first = run_requests(engine, items)
        groups, burst = engine.prefiller.groups, len(passes.prompts)
        deadline = time.monotonic() + 300
        while groups.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_requests(engine, items)
    finally:
        engine.close()
    assert passes.prompts[0] == 1
    if engine.prefiller.exact_together:
        assert groups.get(4, 16) is not None and passes.prompts[burst:] == [4]
    assert [(r["tokens"], r["logprobs"]) for r in first] == [(r["tokens"], r["logprobs"]) for r in second]


def test_prompts_are_prefilled_together_only_where_that_keeps_their_bits(bundled):
    from gpt_jax.serving.prefill import batches_exactly

    exact = batches_exactly(bundled)
    assert exact == cpu_products.enabled()
    assert not batches_exactly(bundled.with_arithmetic("fast"))
    assert not batches_exactly(bundled.quantize_int8())
