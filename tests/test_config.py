import pytest

from gpt_jax.errors import ConfigError
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.presets import GPT2_SMALL, LLAMA_1B, LLAMA_TINY, SHAKESPEARE


def test_gpt2_small_has_the_published_parameter_count():
    assert GPT2_SMALL.num_params == 124_439_808  # GPT-2 small as released (tied head)
    assert GPT2_SMALL.head_dim == 64 and GPT2_SMALL.n_kv_heads == 12


def test_presets_are_in_their_size_classes():
    assert 5e6 <= SHAKESPEARE.num_params <= 15e6
    assert 1.0e9 <= LLAMA_1B.num_params <= 1.2e9


def test_replace_keeps_derived_fields_consistent():
    cfg = GPT2_SMALL.replace(n_heads=4, d_model=32)
    assert (cfg.n_kv_heads, cfg.head_dim) == (4, 8)
    assert LLAMA_TINY.replace(n_layers=3).n_kv_heads == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_heads": 5}, "n_heads=5 must divide d_model=32"),
        ({"n_kv_heads": 3}, "n_kv_heads=3 must divide n_heads=4"),
        ({"norm": "batchnorm"}, "norm must be one of"),
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1"),
        ({"eos_ids": (99,)}, "eos_ids must hold ids in"),
        ({"pad_id": 64}, "pad_id must be in"),
        ({"dtype": "int8"}, "dtype must be one of"),
    ],
)
def test_validation(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        LLAMA_TINY.replace(**changes)


def test_dict_round_trip_and_bad_keys():
    assert ModelConfig.from_dict(LLAMA_TINY.to_dict()) == LLAMA_TINY
    with pytest.raises(ConfigError, match=r"unknown config keys \['n_expert'\]"):
        ModelConfig.from_dict({**LLAMA_TINY.to_dict(), "n_expert": 8})
    with pytest.raises(ConfigError, match="missing config keys"):
        ModelConfig.from_dict({"vocab_size": 10})
    with pytest.raises(ConfigError, match="d_model must be of type int"):
        ModelConfig.from_dict({**LLAMA_TINY.to_dict(), "d_model": "32"})


def test_rope_scaling_and_attention_features_round_trip_and_are_checked():
    from gpt_jax.model.rope import RopeScaling

    cfg = LLAMA_TINY.replace(
        rope_scaling=RopeScaling("llama3", 8.0, 8192, low_freq_factor=1.0, high_freq_factor=4.0),
        qkv_bias=True,
        qk_norm=True,
    )
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    import jax

    from gpt_jax.model.transformer import init_params

    assert sum(x.size for x in jax.tree_util.tree_leaves(init_params(cfg, jax.random.key(0)))) == cfg.num_params
    assert cfg.num_params == LLAMA_TINY.num_params + 2 * (cfg.head_dim * (4 + 2 * 2) + 2 * cfg.head_dim)
    for bad, message in (
        ({"type": "longrope"}, "rope scaling type must be one of"),
        ({"type": "dynamic", "factor": 2.0}, "needs original_context > 0"),
        ({"type": "yarn", "factor": 4.0}, "needs original_context > 0"),
        ({"type": "linear", "factor": float("nan")}, "factor must be a finite number"),
        ({"type": "llama3", "original_context": 8, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq"),
    ):
        with pytest.raises(ConfigError, match=message):
            ModelConfig.from_dict({**LLAMA_TINY.to_dict(), "rope_scaling": bad})
    with pytest.raises(ConfigError, match="unknown rope_scaling keys"):
        ModelConfig.from_dict({**LLAMA_TINY.to_dict(), "rope_scaling": {"mscale": 1.0}})


def test_parameter_count_matches_the_parameters_for_every_feature():
    import jax

    from gpt_jax.model.transformer import init_params

    gemma2_like = LLAMA_TINY.replace(post_norms=True, norm_offset=1.0, embed_scale=True, tie_embeddings=True)
    moe = LLAMA_TINY.replace(n_experts=4, experts_per_token=2)
    for cfg in (gemma2_like, moe, LLAMA_TINY.replace(qkv_bias=True), LLAMA_TINY.replace(attn_bias=True, mlp_bias=True)):
        assert sum(x.size for x in jax.tree_util.tree_leaves(init_params(cfg, jax.random.key(0)))) == cfg.num_params


def test_gemma3_experts_and_partial_rotary_fields_round_trip_and_are_checked():
    from gpt_jax.model.rope import RopeScaling

    cfg = LLAMA_TINY.replace(
        local_rope_theta=10000.0,
        local_rope_scaling=RopeScaling("linear", 2.0),
        rotary_dim=4,
        n_experts=4,
        experts_per_token=2,
        sliding_window=4,
        layer_types=("sliding", "full"),
    )
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.rope_for(0) == (10000.0, RopeScaling("linear", 2.0)) and cfg.rope_for(1) == (10000.0, RopeScaling())
    for changes, message in (
        ({"n_experts": 4}, "experts_per_token=0 must be in"),
        ({"n_experts": 2, "experts_per_token": 3}, "experts_per_token=3 must be in"),
        ({"n_experts": 2, "experts_per_token": 1, "mlp_bias": True}, "experts are gated MLPs without biases"),
        ({"rotary_dim": 3}, "rotary_dim must be even"),
        ({"rotary_dim": 10}, "at most head_dim=8"),
        ({"local_rope_theta": -1.0}, "local_rope_theta must be a finite number >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            LLAMA_TINY.replace(**changes)
