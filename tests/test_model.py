"""The model: cached decoding equals one full forward pass, and left padding does not leak."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.errors import ConfigError
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.model.kv_cache import cached_positions_and_mask, init_cache
from gpt_jax.model.params import flatten
from gpt_jax.model.row_invariant import ForwardMode
from gpt_jax.model.transformer import Transformer, forward, init_params

from .conftest import TINY_CONFIGS


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefill_plus_cached_steps_equal_full_forward(family):
    cfg = TINY_CONFIGS[family]
    params = init_params(cfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size)
    full = forward(cfg, params, tokens)  # [B, T, V]

    model = Transformer(cfg)
    pad_len = jnp.zeros((2,), jnp.int32)
    cache = init_cache(cfg, 2, 16)
    positions, mask = cached_positions_and_mask(cache.index, pad_len, 5, cache.length)
    logits, cache = model.apply({"params": params}, tokens[:, :5], positions, mask, cache, mode=ForwardMode.PREFILL)
    steps = [logits]
    for t in range(5, 12):
        positions, mask = cached_positions_and_mask(cache.index, pad_len, 1, cache.length)
        logits, cache = model.apply(
            {"params": params}, tokens[:, t : t + 1], positions, mask, cache, mode=ForwardMode.DECODE
        )
        steps.append(logits)
    cached = jnp.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
    assert int(cache.index) == 12


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_left_padding_does_not_change_real_logits(family):
    cfg = TINY_CONFIGS[family]
    params = init_params(cfg, jax.random.key(3))
    seq = jax.random.randint(jax.random.key(4), (1, 6), 4, cfg.vocab_size)
    alone = forward(cfg, params, seq)
    padded = jnp.concatenate([jnp.zeros((1, 5), jnp.int32), seq], axis=1)
    valid = jnp.arange(11)[None] >= 5
    np.testing.assert_allclose(forward(cfg, params, padded, valid)[:, 5:], alone, atol=1e-5, rtol=0)


def test_gqa_differs_from_mha_and_params_are_plain_dicts():
    cfg = TINY_CONFIGS["llama"]
    params = init_params(cfg, jax.random.key(0))
    assert isinstance(params, dict) and set(params) == {"embed", "final_norm", "layer_0", "layer_1", "lm_head"}
    assert params["layer_0"]["attn"]["k_kernel"].shape == (cfg.d_model, cfg.n_kv_heads, cfg.head_dim)
    assert params["layer_0"]["attn"]["q_kernel"].shape == (cfg.d_model, cfg.n_heads, cfg.head_dim)


def test_params_of_the_wrong_shape_are_refused_by_name():
    cfg = LLAMA_TINY
    params = init_params(cfg, jax.random.key(0))
    params["layer_1"]["mlp"]["up_kernel"] = params["layer_1"]["mlp"]["up_kernel"][:, :-1]
    with pytest.raises(ConfigError, match=r"layer_1/mlp/up_kernel has shape"):
        forward(cfg, params, jnp.ones((1, 4), jnp.int32))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_table_of_weights_declares_every_axis(family):
    """Sharding and int8 quantization read the axes each weight declares where it is created."""
    from gpt_jax.model.transformer import weight_infos
    from gpt_jax.parallel.sharding import RULES

    cfg = TINY_CONFIGS[family]
    infos = weight_infos(cfg)
    assert set(infos) == set(flatten(init_params(cfg, jax.random.key(0))))
    for name, info in infos.items():
        assert len(info.axes) == len(info.value.shape), name
        assert (info.inputs > 0) == (name.endswith("_kernel") or name == "lm_head"), name
    assert infos["layer_0.attn.o_kernel"].inputs == 2 and infos["layer_0.attn.q_kernel"].inputs == 1
    sharded = {name for name, info in infos.items() if any(a in RULES for a in info.axes)}
    assert "layer_1.mlp.down_kernel" in sharded and "final_norm.scale" not in sharded


def test_experts_switched_per_pair_equal_all_experts_weighted():
    """A mixture of 8 experts, 2 per token: one token (2 < 8 pairs) runs each chosen expert alone (a switch), a longer
    batch runs every expert weighted by the routing; the same token gets the same output either way. With one expert
    the layer is a plain MLP, and a Generator decodes it as the uncached forward pass predicts."""
    from gpt_jax import Generator

    config = LLAMA_TINY.replace(n_experts=8, experts_per_token=2)
    params = init_params(config, jax.random.key(3))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 9)), jnp.int32)
    weighted = forward(config, params, tokens)[:, 0]  # 36 tokens x 2 experts: every expert weighted
    switched = jnp.concatenate([forward(config, params, tokens[i : i + 1, :1])[:, 0] for i in range(4)])
    assert np.abs(np.asarray(weighted - switched)).max() <= 1e-5
    one = LLAMA_TINY.replace(n_experts=1, experts_per_token=1)
    moe = init_params(one, jax.random.key(3))
    plain = {k: v for k, v in moe.items()}
    for i in range(LLAMA_TINY.n_layers):
        plain[f"layer_{i}"] = {**moe[f"layer_{i}"], "mlp": moe[f"layer_{i}"]["mlp"]["expert_0"]}
    assert np.abs(np.asarray(forward(one, moe, tokens) - forward(LLAMA_TINY, plain, tokens))).max() <= 1e-5
    gen = Generator(config, params)
    out = gen.generate_ids([[1, 5, 9]], max_new_tokens=6, temperature=0.0, ignore_eos=True).token_ids[0]
    logits = forward(config, params, jnp.asarray([[1, 5, 9] + out]))[0]  # teacher-forced: what each step chose
    assert np.argmax(np.asarray(logits[2:-1]), axis=-1).tolist() == out
