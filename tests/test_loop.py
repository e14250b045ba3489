"""The decode loop driven by a fake model whose next token is always `token + 1`."""

import functools

import jax
import numpy as np
import pytest

from gpt_jax.decoding import loop as decode
from gpt_jax.decoding.batching import left_pad
from gpt_jax.decoding.prepare import prepare
from gpt_jax.decoding.rows import FINISH_NAMES, LENGTH
from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.model.kv_cache import init_cache

V = LLAMA_TINY.vocab_size
PAD = 0


def fake_logits_fn(params, tokens, positions, mask, cache, mode, last_only=False):
    """logits = one_hot(token + 1): a model that counts."""
    logits = jax.nn.one_hot((tokens + 1) % V, V) * 10.0
    return (logits[:, -1:] if last_only else logits), cache.advance(tokens.shape[1])


def run(tokens, inputs, *, buffer):
    return _run(inputs.replace(tokens=tokens), buffer=buffer)


@functools.partial(jax.jit, static_argnames="buffer")
def _run(inputs, *, buffer):
    tokens = inputs.tokens
    cache = init_cache(LLAMA_TINY, tokens.shape[0], tokens.shape[1] + buffer)
    return decode.generate_loop(fake_logits_fn, None, inputs, cache, buffer)


def inputs_for(batch, max_new, eos=(), temperature=0.0, stop_ids=None):
    """The product's own inputs (`prepare`) for the prompts of `batch`, then `batch`'s own padding."""
    config = LLAMA_TINY.replace(eos_ids=tuple(eos), pad_id=PAD)
    prompts = [row[pad:].tolist() for row, pad, on in zip(batch.tokens, batch.pad_len, batch.active) if on]
    budgets = np.broadcast_to(np.asarray(max_new, np.int32), (batch.tokens.shape[0],))[: len(prompts)].tolist()
    settings = GenerationSettings(
        max_new_tokens=budgets, temperature=temperature, top_p=1.0, seed=0, stop_ids=stop_ids, ignore_eos=not eos
    )
    inputs = prepare(config, prompts, settings).inputs
    assert inputs.tokens.shape[0] == batch.tokens.shape[0]
    return inputs.replace(tokens=batch.tokens, pad_len=batch.pad_len)


def test_counts_exactly():
    batch = left_pad([[1, 2, 3, 4]], PAD)
    state = run(batch.tokens, inputs_for(batch, 4), buffer=16)
    assert state.tokens[0, :4].tolist() == [5, 6, 7, 8]
    assert (np.asarray(state.tokens[0, 4:]) == PAD).all()
    assert int(state.step) == 4 and state.rows.finish.tolist() == [LENGTH]


def test_sampled_rows_follow_a_one_hot_model_too():
    batch = left_pad([[1, 2, 3, 4]], PAD)
    state = run(batch.tokens, inputs_for(batch, 4, temperature=0.01), buffer=16)
    assert state.tokens[0, :4].tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize(
    "prompts, eos, max_new, tokens, lengths, finish, steps",
    [
        # row 0 meets EOS 7 after 3 tokens; row 1 runs to its budget; loop stops at the longest row's need
        ([[3, 4], [10]], [7], [8, 5], [[5, 6, 7], [11, 12, 13, 14, 15]], [3, 5], ["eos", "length"], 5),
        # every row ends on EOS early: the loop ends after 2 steps although the budget is 12
        ([[5], [6]], [7, 8], [12, 12], [[6, 7], [7]], [2, 1], ["eos", "eos"], 2),
        # several EOS ids; per-row budgets
        (
            [[1], [20], [30]],
            [4, 33],
            [10, 2, 10],
            [[2, 3, 4], [21, 22], [31, 32, 33]],
            [3, 2, 3],
            ["eos", "length", "eos"],
            3,
        ),
        # no EOS ids (ignore_eos): exactly max_new tokens
        ([[5]], [], [6], [[6, 7, 8, 9, 10, 11]], [6], ["length"], 6),
    ],
)
def test_eos_table(prompts, eos, max_new, tokens, lengths, finish, steps):
    batch = left_pad(prompts, PAD)
    max_new = max_new + [1] * (batch.tokens.shape[0] - len(prompts))
    state = run(batch.tokens, inputs_for(batch, max_new, eos), buffer=16)
    rows = len(prompts)
    assert state.rows.lengths[:rows].tolist() == lengths
    for r in range(rows):
        assert state.tokens[r, : lengths[r]].tolist() == tokens[r]
        assert (np.asarray(state.tokens[r, lengths[r] :]) == PAD).all(), "pad after EOS"
    assert [FINISH_NAMES[int(f)] for f in state.rows.finish[:rows]] == finish
    assert int(state.step) == steps


def test_cache_full_stops_the_loop():
    batch = left_pad([[1]], PAD, length=2)
    cache = init_cache(LLAMA_TINY, 1, 5)  # 2 prompt slots + room for 3 fed tokens
    state = jax.jit(lambda i, c: decode.generate_loop(fake_logits_fn, None, i, c, 16))(inputs_for(batch, 16), cache)
    assert int(state.step) == 4 and state.rows.finish.tolist() == [LENGTH]
    assert state.tokens[0, :4].tolist() == [2, 3, 4, 5]


def test_stop_sequences_end_rows():
    batch = left_pad([[1], [10], [20]], PAD)
    # row 0 counts 2, 3, 4, 5, 6: stops after 6; row 1: 11, 12, 13; [63, 25] never matches (63 never comes first)
    inputs = inputs_for(batch, 12, stop_ids=[[4, 5, 6], [13], [63, 25]])
    state = run(batch.tokens, inputs, buffer=16)
    assert state.tokens[0, :5].tolist() == [2, 3, 4, 5, 6] and int(state.rows.lengths[0]) == 5
    assert state.tokens[1, :3].tolist() == [11, 12, 13] and int(state.rows.lengths[1]) == 3
    assert int(state.rows.lengths[2]) == 12
    assert [FINISH_NAMES[int(f)] for f in state.rows.finish[:3]] == ["stop", "stop", "length"]
