"""int8 weight-only quantization: close logits and mostly equal greedy output, reported with numbers."""

import jax
import numpy as np
import pytest

from gpt_jax import Generator
from gpt_jax.config import GPT2_TINY, LLAMA_TINY
from gpt_jax.model import forward
from gpt_jax.quantize import Int8Kernel, dequantize, quantize_kernel


def test_per_channel_round_trip_error_is_bounded():
    w = jax.random.normal(jax.random.key(0), (64, 4, 8))
    qk = quantize_kernel(w, in_axes=1)
    assert qk.q.dtype == np.int8 and qk.scale.shape == (4, 8)
    err = np.abs(np.asarray(dequantize(qk) - w))
    assert (err <= np.asarray(qk.scale)[None] / 2 + 1e-7).all()  # at most half a step per channel


@pytest.mark.parametrize("cfg", [GPT2_TINY, LLAMA_TINY], ids=["gpt2", "llama"])
def test_int8_model_tracks_fp32(cfg):
    g = Generator.from_config(cfg, key=jax.random.key(3))
    q = g.quantize_int8()
    assert isinstance(q.params["layer_0"]["attn"]["q_kernel"], Int8Kernel)
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, cfg.vocab_size)
    ref = np.asarray(forward(cfg, g.params, tokens))
    got = np.asarray(forward(cfg, q.params, tokens))
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 0.05, rel
    assert q.generate_ids([[1, 2, 3]], max_new_tokens=8, temperature=0.0, ignore_eos=True).finish_reasons == ["length"]
