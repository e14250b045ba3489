"""The prefix cache: a prompt that starts with blocks another prompt prefilled reuses their keys and values, and
its tokens and log-probabilities are the bits of a miss (an engine without the cache): for full-block and
partial-block prefixes, a prefix shared by 16 concurrent requests, a chat whose history grows, and under a budget
so small that blocks are evicted all the time."""

from __future__ import annotations

import numpy as np
import pytest

import gpt_jax
from gpt_jax.serving.engine import Engine, Observer
from gpt_jax.serving.prefix_cache import block_bytes, block_keys
from tests.serving import run_requests
from tests.test_engine import assert_same_as_generate

CHUNK = 16


@pytest.fixture(scope="module")
def bundled():
    return gpt_jax.load()


@pytest.fixture(scope="module")
def engines(bundled):
    """(with the prefix cache, without it): 4 slots, blocks of 16 tokens."""
    cached = Engine(bundled, slots_count=4, chunk=CHUNK)
    plain = Engine(bundled, slots_count=4, chunk=CHUNK, prefix_cache_gb=0)
    yield cached, plain
    cached.close()
    plain.close()


def ids(gen, text: str) -> list[int]:
    return gen.tokenizer.encode(text)


def sampled(seed: int, **more) -> dict:
    return {"max_new_tokens": 10, "temperature": 1.0, "seed": seed, "top_logprobs": 2, **more}


def assert_same_bits(got: list[dict], want: list[dict]) -> None:
    for a, b in zip(got, want, strict=True):
        assert "error" not in a and "error" not in b
        assert a["tokens"] == b["tokens"] and a["logprobs"] == b["logprobs"] and a["top"] == b["top"]
        assert a["finish"] == b["finish"]


def test_hits_of_full_and_partial_block_prefixes_are_the_bits_of_misses(bundled, engines):
    cached, plain = engines
    system = ids(bundled, "KING HENRY: Now, lords, the battle is at hand; let every man be ready with his sword ")
    system = (system * 3)[:70]  # 4 whole blocks and 6 tokens
    question = lambda text: ids(bundled, text)[1:]  # without BOS
    items = [
        (system + question("who goes there?"), sampled(1)),  # a miss: stores 4 blocks (and more)
        (system + question("what news from France?"), sampled(2)),  # the 4 whole blocks of the prefix hit
        (system[:40] + question("a different road entirely"), sampled(3)),  # 2 blocks, then apart mid-block
        (system[:48], sampled(4)),  # 3 whole blocks: the last is recomputed for its logits
        (system[:48], sampled(4, temperature=0.0)),  # the same prompt again, greedy
    ]
    got = [run_requests(cached, [item])[0] for item in items]
    assert [r["cached"] for r in got] == [0, 64, 32, 32, 32]
    want = [run_requests(plain, [item])[0] for item in items]
    assert all(r["cached"] == 0 for r in want)
    assert_same_bits(got, want)
    assert_same_as_generate(bundled, items[:2], got[:2])  # chunked prefill: generate's tokens, logprobs to 1e-4


def test_sixteen_concurrent_requests_share_a_prefix(bundled, engines):
    cached, plain = engines
    prefix = (ids(bundled, "FIRST CITIZEN: Before we proceed any further, hear me speak. ") * 8)[:100]
    rng = np.random.default_rng(0)
    items = [(prefix + rng.integers(4, 3000, rng.integers(1, 30)).tolist(), sampled(i)) for i in range(16)]
    got = run_requests(cached, items)
    want = run_requests(plain, items)
    assert_same_bits(got, want)
    assert sorted(r["cached"] for r in got)[1:] == [96] * 15  # the first to be prefilled computed the prefix


def test_a_chat_whose_history_grows_reuses_its_earlier_turns(bundled, engines):
    cached, plain = engines
    history = ids(bundled, "You are a player in a company of actors; answer in verse.\nUSER: speak of the moon\n")
    previous = 0  # the previous turn's prompt length
    for turn in range(4):
        item = (history, sampled(turn, max_new_tokens=20))
        got, want = run_requests(cached, [item])[0], run_requests(plain, [item])[0]
        assert_same_bits([got], [want])
        if turn:  # every whole block of the previous turn's prompt (the reply's keys came from decode steps)
            assert got["cached"] >= previous // CHUNK * CHUNK
        previous = len(history)
        history = history + got["tokens"][0] + ids(bundled, f"\nUSER: and what of turn {turn}?\n")[1:]


class Budget(Observer):
    """Records the bytes the engine's prefix cache holds after every prefill chunk."""

    def __init__(self):
        self.engine, self.held = None, []

    def on_prefill(self, tokens: int, prompts: int = 1) -> None:
        self.held.append(self.engine.prefix_cache.used_bytes)


def test_a_tiny_budget_evicts_loses_nothing_and_stays_within_it(bundled, engines):
    _, plain = engines
    budget = 3 * block_bytes(bundled.config, CHUNK)
    watch = Budget()
    engine = Engine(bundled, slots_count=2, chunk=CHUNK, prefix_cache_gb=budget / 2**30, observer=watch)
    watch.engine = engine
    try:
        prefixes = [(ids(bundled, f"{name}: ") * 40)[:50] for name in ("ROMEO", "JULIET", "MERCUTIO")]
        order = [0, 1, 1, 0, 2, 2, 1, 0, 0]  # a prefix hit right after another's blocks pushed the rest out
        items = [(prefixes[p] + [7 + k], sampled(k)) for k, p in enumerate(order)]
        got = [run_requests(engine, [item])[0] for item in items]
        cache = engine.prefix_cache
        assert cache.capacity == 3 and max(watch.held) <= budget and cache.evicted > 0
        assert [r["cached"] for r in got] == [0, 0, 48, 0, 0, 48, 0, 0, 48]
    finally:
        engine.close()
    assert_same_bits(got, [run_requests(plain, [item])[0] for item in items])


def test_block_keys_chain_the_contents_before_them(bundled):
    a = block_keys(np.arange(48), 16, 3)
    b = block_keys(np.r_[np.arange(16), np.arange(16, 48) + 0], 16, 3)
    c = block_keys(np.r_[99, np.arange(1, 48)], 16, 3)
    assert a == b and len(set(a)) == 3
    assert all(x != y for x, y in zip(a, c))  # one token in the first block changes every key after it
    with pytest.raises(gpt_jax.InputError, match="prefix_cache_gb must be a number >= 0"):
        Engine(bundled, prefix_cache_gb=-1)


def test_blocks_of_prompts_prefilled_together_are_the_bits_of_misses(bundled, engines):
    """Four prompts of exactly one block arrive together at the idle engine (one prefill pass where the kernel
    makes that exact): each keeps its block from its own row of the pass, and prompts that start with those blocks
    hit them, with the bits of the engine without the cache."""
    cached, plain = engines
    cached.prefiller.groups.compile(4, CHUNK)  # the pass's program (else they go one by one while it compiles)
    rng = np.random.default_rng(7)
    blocks = [rng.integers(4, 4000, CHUNK).tolist() for _ in range(4)]
    first = [(block, sampled(10 + i)) for i, block in enumerate(blocks)]
    then = [(block + rng.integers(4, 4000, 9).tolist(), sampled(20 + i)) for i, block in enumerate(blocks)]
    got = run_requests(cached, first) + run_requests(cached, then)
    assert all(cached.prefix_cache.has(block_keys(np.array(block), CHUNK, 1)[0]) for block in blocks)
    assert [r["cached"] for r in got] == [0] * 4 + [CHUNK] * 4
    assert_same_bits(got, run_requests(plain, first) + run_requests(plain, then))
