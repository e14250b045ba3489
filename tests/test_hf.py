"""Hugging Face import and export against transformers (PyTorch) on identical random weights."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gpt_jax
from gpt_jax import CheckpointError, Generator
from gpt_jax.checkpoints import checkpoint
from gpt_jax.model.presets import GPT2_TINY, LLAMA_TINY
from gpt_jax.model.transformer import forward

torch.set_num_threads(2)
V = 96


def make_hf(kind: str, directory, **overrides):
    torch.manual_seed(0)
    common = dict(
        vocab_size=overrides.pop("vocab_size", V), bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1
    )
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common, **overrides)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cls_cfg, cls_model = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
            "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
            "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
            "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
            "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
            "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
        }[kind]
        params = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
        )
        cfg = cls_cfg(**{**params, **common, **overrides})
        cfg._attn_implementation = "eager"  # Gemma 2's soft-capping runs in the eager path only
        model = cls_model(cfg)
    with torch.no_grad():  # no weight keeps its initial value (biases 0, norms 1), so every mapping is exercised
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory, safe_serialization=True)
    return model


LLAMA3_ROPE = {  # original context 16: the test prompts cross all three frequency bands
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
VARIANTS = {
    "gpt2": ("gpt2", {}),
    "llama-gqa": ("llama", {"rope_theta": 500000.0}),
    "llama-tied": ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "mistral": ("mistral", {"sliding_window": 4096}),
    "llama3-rope": ("llama", {"rope_parameters": {**LLAMA3_ROPE, "rope_theta": 10000.0}}),
    "yarn-rope": ("llama", {"rope_parameters": {**YARN_ROPE, "rope_theta": 10000.0}}),
    "linear-rope": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {"head_dim": 16}),  # head_dim != hidden_size / heads, as in the real models
    # windows shorter than the test sequences (up to 8 prompt + 32 new tokens): the window is exact, not a cap
    "mistral-window": ("mistral", {"sliding_window": 6}),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}),
    "gemma": ("gemma", {"head_dim": 8, "num_key_value_heads": 1}),  # multi-query, as Gemma 2B
    "phi3": ("phi3", {"sliding_window": 6}),  # fused qkv_proj and gate_up_proj, grouped-query, windowed
    "phi3-partial": ("phi3", {"partial_rotary_factor": 0.5}),  # rotates half of each head, as Phi-4-mini 3/4
    "mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 6}),
    "gemma3": (  # per-layer-type rope: linear scaling on the global layer, the local base on the sliding one
        "gemma3_text",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 24,
            "sliding_window": 6,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        },
    ),
    "gemma2": (  # small caps and a query scalar apart from head_dim, so each feature changes the numbers
        "gemma2",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 1.0,
            "final_logit_softcapping": 2.0,
            "sliding_window": 6,
        },
    ),
}

PROMPTS = [[1, 5, 9, 13, 17, 21, 25, 29], [1, 7, 40], [1, 60, 61, 62, 63, 64]]


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    kind, overrides = VARIANTS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    model = make_hf(kind, directory, **overrides)
    return model, gpt_jax.load(directory), directory


def hf_left_padded(prompts, pad=0):
    t = max(map(len, prompts))
    ids = torch.tensor([[pad] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_logits_match_with_padding(pair):
    model, ours, _ = pair
    ids, mask = hf_left_padded(PROMPTS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    got = np.asarray(forward(ours.config, ours.params, ids.numpy(), mask.numpy().astype(bool)))
    real = mask.numpy().astype(bool)
    assert np.abs(got[real] - ref[real]).max() <= 1e-4


def test_greedy_generation_matches_token_for_token(pair):
    model, ours, _ = pair
    ids, mask = hf_left_padded(PROMPTS)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=32, pad_token_id=0, eos_token_id=None
        )[:, ids.shape[1] :].tolist()
    got = ours.generate_ids(PROMPTS, max_new_tokens=32, temperature=0.0, ignore_eos=True).token_ids
    assert got == ref


def test_dynamic_rope_follows_each_rows_length(tmp_path):
    """NTK-aware dynamic scaling: past the original context (16 here) the rotary base grows with the row's length.
    transformers computes that length over the whole batch, so each row is compared with it generating alone."""
    from gpt_jax.model.rope import RopeScaling

    dynamic = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    model = make_hf("llama", tmp_path / "d", max_position_embeddings=16, rope_parameters=dynamic)
    ours = gpt_jax.load(tmp_path / "d")
    assert (ours.config.rope_scaling.type, ours.config.max_seq_len) == ("dynamic", 64)
    long = [list(range(1, 25))]  # 24 positions, past the original 16
    with torch.no_grad():
        ref = model(torch.tensor(long)).logits.numpy()
    got = np.asarray(forward(ours.config, ours.params, np.asarray(long)))
    plain = np.asarray(forward(ours.config.replace(rope_scaling=RopeScaling()), ours.params, np.asarray(long)))
    assert np.abs(got - ref).max() <= 1e-4 < np.abs(plain - ref).max()
    got = ours.generate_ids(PROMPTS, max_new_tokens=32, temperature=0.0, ignore_eos=True).token_ids
    for prompt, row in zip(PROMPTS, got):
        with torch.no_grad():  # a prompt shorter than 16 resets transformers' grown frequencies
            ref = model.generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=32, eos_token_id=None, pad_token_id=0
            )
        assert row == ref[0, len(prompt) :].tolist()


def test_config_fields_are_mapped(pair):
    model, ours, _ = pair
    cfg = ours.config
    if model.config.model_type == "gpt2":
        assert (cfg.norm, cfg.position, cfg.activation, cfg.tie_embeddings) == (
            "layernorm",
            "learned",
            "gelu_tanh",
            True,
        )
    else:
        assert cfg.n_kv_heads == model.config.num_key_value_heads
        assert cfg.tie_embeddings == model.config.tie_word_embeddings
        assert cfg.norm_eps == model.config.rms_norm_eps


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_export_round_trip(family, tmp_path):
    cfg = {"llama": LLAMA_TINY, "gpt2": GPT2_TINY}[family]
    g = Generator.from_config(cfg.replace(max_seq_len=64), key=3)
    checkpoint.save(g, tmp_path / "hf", format="hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([PROMPTS[0][:6], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    got = np.asarray(forward(g.config, g.params, ids.numpy()))
    assert np.abs(got - ref).max() <= 1e-4
    again = gpt_jax.load(tmp_path / "hf")
    assert np.abs(np.asarray(forward(again.config, again.params, ids.numpy())) - got).max() <= 1e-6


def test_bf16_and_fp16_checkpoints_load_into_a_chosen_dtype(tmp_path):
    model = make_hf("llama", tmp_path / "bf16")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
    g32 = gpt_jax.load(tmp_path / "bf16")
    assert g32.params["embed"].dtype == np.float32
    ref = model.model.embed_tokens.weight.detach().float().numpy()
    assert np.array_equal(np.asarray(g32.params["embed"]), ref)
    g16 = gpt_jax.load(tmp_path / "bf16", dtype="bfloat16")
    assert g16.params["embed"].dtype == np.dtype("bfloat16")
    model.to(torch.float16).save_pretrained(tmp_path / "fp16", safe_serialization=True)
    assert gpt_jax.load(tmp_path / "fp16").params["lm_head"].dtype == np.float32


def test_sharded_checkpoint_loads_and_missing_shard_is_named(tmp_path):
    model = make_hf("llama", tmp_path / "sharded")
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="30KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (tmp_path / "sharded" / "model.safetensors").unlink(missing_ok=True)
    g = gpt_jax.load(tmp_path / "sharded")
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    assert np.abs(np.asarray(forward(g.config, g.params, ids.numpy())) - ref).max() <= 1e-4
    (tmp_path / "sharded" / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"{shards[1]}: missing shard"):
        gpt_jax.load(tmp_path / "sharded")


def test_unsupported_and_damaged_directories(tmp_path):
    make_hf("llama", tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    raw = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**raw, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unsupported model_type 'bert'"):
        gpt_jax.load(tmp_path / "m")
    cfg_path.write_text(json.dumps({**raw, "rope_parameters": {"rope_type": "longrope", "factor": 4.0}}))
    with pytest.raises(CheckpointError, match="rope scaling type 'longrope' is not supported"):
        gpt_jax.load(tmp_path / "m")
    cfg_path.write_text(json.dumps({**raw, "intermediate_size": 48}))
    with pytest.raises(CheckpointError, match="gate_proj.weight' converts to shape"):
        gpt_jax.load(tmp_path / "m")


def test_gpt2_byte_level_tokenizer(tmp_path, corpus_slice):
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train([str(corpus_slice)], vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    make_hf("gpt2", tmp_path / "g", vocab_size=320)
    bpe.save_model(str(tmp_path / "g"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "g")
    g = gpt_jax.load(tmp_path / "g")
    for text in ["Hello there, ROMEO!", "繁體中文 😀 café", "  spaced\n\nlines"]:
        ids = g.tokenizer.encode(text)
        assert ids == hf_tok.encode(text)
        assert g.tokenizer.decode(ids) == hf_tok.decode(ids) == text
    out = g.generate("ROMEO:", max_new_tokens=5, seed=0, ignore_eos=True)
    assert len(out.token_ids[0]) == 5 and isinstance(out.texts[0], str)


def test_directory_without_tokenizer_still_loads(pair):
    _, ours, directory = pair
    if ours.tokenizer is None:
        with pytest.raises(gpt_jax.TokenizerError, match="without a tokenizer"):
            ours.generate("hi")


def test_new_families_map_to_features(tmp_path):
    make_hf("qwen2", tmp_path / "q2")
    make_hf("qwen3", tmp_path / "q3", head_dim=16)
    q2, q3 = gpt_jax.load(tmp_path / "q2").config, gpt_jax.load(tmp_path / "q3").config
    assert (q2.qkv_bias, q2.attn_bias, q2.qk_norm, q2.add_bos) == (True, False, False, False)
    assert (q3.qkv_bias, q3.qk_norm, q3.head_dim) == (False, True, 16)


def test_both_rope_forms_give_one_config():
    """Checkpoints saved before transformers 5 write rope_theta + rope_scaling; 5.x writes rope_parameters."""
    from gpt_jax.checkpoints.hf.load import config_from_hf

    base = dict(model_type="llama", vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    base.update(num_attention_heads=4, max_position_embeddings=128)
    old = config_from_hf({**base, "rope_theta": 500000.0, "rope_scaling": {**LLAMA3_ROPE}})
    new = config_from_hf({**base, "rope_parameters": {**LLAMA3_ROPE, "rope_theta": 500000.0}})
    legacy_key = {**LLAMA3_ROPE, "type": LLAMA3_ROPE["rope_type"]}
    del legacy_key["rope_type"]
    oldest = config_from_hf({**base, "rope_theta": 500000.0, "rope_scaling": legacy_key})
    assert old == new == oldest and new.rope_scaling.type == "llama3" and new.rope_theta == 500000.0
    assert new.rope_scaling.original_context == 16 and new.rope_scaling.factor == 8.0
    for rope in ({"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}, YARN_ROPE):
        old = config_from_hf({**base, "rope_theta": 20000.0, "rope_scaling": rope})
        new = config_from_hf({**base, "rope_parameters": {**rope, "rope_theta": 20000.0}})
        assert old == new and (new.rope_scaling.type, new.rope_theta) == (rope["rope_type"], 20000.0)
    for rope, message in (
        ({"rope_type": "yarn", "factor": 2.0, "mscale": 0.7}, r"rope parameters \['mscale'\] are not supported"),
        ({"rope_type": "longrope"}, "'longrope' is not supported"),
        ({"rope_type": "default", "partial_rotary_factor": 0.75}, "partial_rotary_factor=0.75 is supported for phi3"),
    ):
        with pytest.raises(CheckpointError, match=message):
            config_from_hf({**base, "rope_parameters": rope})
    phi = config_from_hf({**base, "model_type": "phi3", "partial_rotary_factor": 0.75, "head_dim": 8})
    assert phi.rotary_dim == 6
    qwen = {**base, "model_type": "qwen2", "use_sliding_window": True}
    with pytest.raises(CheckpointError, match="missing field 'sliding_window'"):
        config_from_hf(qwen)
    with pytest.raises(CheckpointError, match=r"layer_types \['chunked_attention'\] are not supported"):
        config_from_hf({**qwen, "sliding_window": 4, "layer_types": ["chunked_attention", "full_attention"]})
    old_form = config_from_hf({**qwen, "sliding_window": 4, "max_window_layers": 1})
    assert (old_form.sliding_window, old_form.layer_types) == (4, ("full", "sliding"))


def test_gemma_configs_map_to_features():
    from gpt_jax.checkpoints.hf.load import config_from_hf

    base = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)
    gemma = config_from_hf({**base, "model_type": "gemma", "head_dim": 8, "hidden_act": "gelu"})  # legacy name
    assert (gemma.norm_offset, gemma.embed_scale, gemma.activation, gemma.tie_embeddings) == (
        1.0,
        True,
        "gelu_tanh",
        True,
    )
    assert not gemma.post_norms and gemma.sliding_window == 0
    old = {**base, "model_type": "gemma2", "head_dim": 8, "query_pre_attn_scalar": 16, "sliding_window": 6}
    g2 = config_from_hf({**old, "attn_logit_softcapping": 50.0, "final_logit_softcapping": None})
    assert (g2.post_norms, g2.attn_scalar, g2.attn_softcap, g2.final_softcap) == (True, 16.0, 50.0, 0.0)
    assert (
        g2.layer_types == ("sliding", "full", "sliding", "full") and g2.sliding_window == 6
    )  # no layer_types: pattern
    with pytest.raises(CheckpointError, match="hidden activation 'relu' is not supported"):
        config_from_hf({**old, "hidden_activation": "relu"})


def test_gemma3_and_mixtral_configs_in_both_forms():
    """Gemma 3 before transformers 5: rope_theta + rope_scaling for global layers, rope_local_base_freq for sliding
    ones, sliding_window_pattern; from 5.x: rope_parameters per layer type and layer_types."""
    from gpt_jax.checkpoints.hf.config import config_from_hf

    base = dict(model_type="gemma3_text", vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=6)
    base.update(num_attention_heads=4, head_dim=8, sliding_window=4)
    old = config_from_hf(
        {**base, "rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 3}
        | {"rope_local_base_freq": 10000.0}
    )
    per_type = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    layer_types = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    new = config_from_hf({**base, "rope_parameters": per_type, "layer_types": layer_types})
    assert old == new and new.layer_types == ("sliding", "sliding", "full") * 2
    assert (new.rope_theta, new.rope_scaling.factor, new.local_rope_theta, new.local_rope_scaling.type) == (
        1e6,
        8.0,
        10000.0,
        "default",
    )
    assert new.rope_for(0) == (10000.0, new.local_rope_scaling) and new.rope_for(2) == (1e6, new.rope_scaling)
    assert (new.qk_norm, new.post_norms, new.norm_offset, new.attn_scalar) == (True, True, 1.0, 256.0)
    with pytest.raises(CheckpointError, match=r"rope_parameters for layer types \['chunked_attention'\]"):
        config_from_hf({**base, "rope_parameters": {**per_type, "chunked_attention": {}}})
    mixtral = dict(base, model_type="mixtral", num_local_experts=8, num_experts_per_tok=2)
    del mixtral["head_dim"], mixtral["sliding_window"]
    moe = config_from_hf(mixtral)
    assert (moe.n_experts, moe.experts_per_token, moe.sliding_window) == (8, 2, 0)
    with pytest.raises(CheckpointError, match="missing field 'num_local_experts'"):
        config_from_hf({k: v for k, v in mixtral.items() if k != "num_local_experts"})
    with pytest.raises(CheckpointError, match="experts_per_token=9 must be in"):
        config_from_hf({**mixtral, "num_experts_per_tok": 9})


@pytest.mark.slow
def test_loading_a_1gb_llama3_shaped_checkpoint_stays_under_1_5x_its_size(tmp_path):
    """benchmarks/hf_load_memory.py: a random Llama-3-shaped checkpoint (vocabulary 128256, ~1.2 GB fp32) loaded in a
    fresh process; the resident memory it adds stays below 1.5x the checkpoint's size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_load_memory.py"
    spec = importlib.util.spec_from_file_location("hf_load_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(tmp_path / "llama3")
    assert result["checkpoint_mb"] > 1000 and result["params"] > 300e6
    assert result["growth_over_size"] < 1.5, result
