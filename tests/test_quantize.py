"""int8 quantization (weight-only and dynamic activations): close logits and mostly equal greedy output."""

import jax
import numpy as np
import pytest

from gpt_jax import Generator
from gpt_jax.model.presets import GPT2_TINY, LLAMA_TINY
from gpt_jax.model.quantize import Int8Kernel, contract, dequantize, quantize_kernel
from gpt_jax.model.transformer import forward


def test_per_channel_round_trip_error_is_bounded():
    w = jax.random.normal(jax.random.key(0), (64, 4, 8))
    qk = quantize_kernel(w, in_axes=1)
    assert qk.q.dtype == np.int8 and qk.scale.shape == (4, 8)
    err = np.abs(np.asarray(dequantize(qk) - w))
    assert (err <= np.asarray(qk.scale)[None] / 2 + 1e-7).all()  # at most half a step per channel


@pytest.mark.parametrize("activations", [False, True], ids=["weight-only", "dynamic"])
@pytest.mark.parametrize("cfg", [GPT2_TINY, LLAMA_TINY], ids=["gpt2", "llama"])
def test_int8_model_tracks_fp32(cfg, activations):
    g = Generator.from_config(cfg, key=jax.random.key(3))
    q = g.quantize_int8(activations=activations)
    kernel = q.params["layer_0"]["attn"]["q_kernel"]
    assert isinstance(kernel, Int8Kernel) and kernel.activations == activations
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, cfg.vocab_size)
    ref = np.asarray(forward(cfg, g.params, tokens))
    got = np.asarray(forward(cfg, q.params, tokens))
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 0.05, rel
    # greedy output: along fp32's greedy continuation, int8 picks the same next token almost everywhere (a random
    # model's near-ties may flip a few; once one flips, free-running continuations part for good)
    prompts = [[1, 2, 3], [5, 9, 4]]
    greedy = g.generate_ids(prompts, max_new_tokens=32, temperature=0.0, ignore_eos=True).token_ids
    sequences = jax.numpy.asarray([p + t for p, t in zip(prompts, greedy)])
    chosen = {name: np.asarray(forward(cfg, params, sequences))[:, 2:-1].argmax(-1) for name, params in
              (("fp32", g.params), ("int8", q.params))}
    assert (chosen["fp32"] == np.asarray(greedy)).all()  # the forward pass reproduces the decode's tokens
    assert (chosen["int8"] == chosen["fp32"]).mean() >= 0.9, (chosen["int8"] == chosen["fp32"]).mean()


def test_dynamic_product_matches_its_definition_for_one_token_and_many():
    """int32(x_q @ q) * x_scale * w_scale with one symmetric scale per token, computed in numpy; the lone-token
    path (paired with a zero row inside) must give the same numbers as that token inside a batch."""
    w = jax.random.normal(jax.random.key(0), (32, 4, 8))
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 2, 32)), np.float32)
    qk = quantize_kernel(w, in_axes=1, activations=True)
    x_scale = np.abs(x).max(-1, keepdims=True) / 127
    xq = np.clip(np.round(x / x_scale), -127, 127).astype(np.int64)
    want = np.einsum("btd,dnh->btnh", xq, np.asarray(qk.q, np.int64)) * x_scale[..., None] * np.asarray(qk.scale)
    got = np.asarray(contract("BTD,DNH->BTNH", x, qk))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    one = np.asarray(contract("BTD,DNH->BTNH", x[1:2, 1:2], qk))
    np.testing.assert_allclose(one, got[1:2, 1:2], rtol=1e-6, atol=1e-7)
    zero = np.asarray(contract("BTD,DNH->BTNH", np.zeros((1, 1, 32), np.float32), qk))
    assert np.isfinite(zero).all() and not zero.any()
