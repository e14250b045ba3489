"""Model directories: exact round trips, atomic saves, and a typed error for every kind of damage."""

import json

import jax
import numpy as np
import pytest

import gpt_jax
from gpt_jax import CheckpointError, Generator
from gpt_jax.checkpoints import checkpoint
from gpt_jax.model.presets import LLAMA_TINY
from gpt_jax.model.params import flatten


@pytest.fixture(scope="module")
def model(small_tokenizer):
    cfg = LLAMA_TINY.replace(vocab_size=320, pad_id=3)
    return Generator.from_config(cfg, small_tokenizer, jax.random.key(2))


@pytest.fixture()
def saved(model, tmp_path):
    return checkpoint.save(model, tmp_path / "ckpt")


def test_round_trip_is_bit_identical(model, saved):
    names = ["config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"]
    assert sorted(p.name for p in saved.iterdir()) == names
    loaded = gpt_jax.load(saved)
    assert loaded.config == model.config
    flat_a, flat_b = flatten(model.params), flatten(loaded.params)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k])), k
    kw = dict(max_new_tokens=10, seed=1, ignore_eos=True)
    assert loaded.generate("ROMEO:", **kw).texts == model.generate("ROMEO:", **kw).texts


def test_loading_memory_maps(saved):
    tensors = checkpoint.safetensors_io.read(saved / "model.safetensors")
    arr = next(iter(tensors.values()))
    assert not arr.flags.owndata and not arr.flags.writeable  # a view of the mapped file, not a copy


def test_bfloat16_load(saved):
    g = gpt_jax.load(saved, dtype="bfloat16")
    assert g.params["embed"].dtype == np.dtype("bfloat16") and g.config.dtype == "bfloat16"


def _rewrite_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _corrupt(kind, path):
    weights = path / "model.safetensors"
    if kind == "missing config":
        (path / "config.json").unlink()
    elif kind == "missing weights":
        weights.unlink()
    elif kind == "bad json":
        (path / "config.json").write_text("{not json")
    elif kind == "unknown key":
        _rewrite_config(path, mystery=1)
    elif kind == "bad value":
        _rewrite_config(path, norm="batchnorm")
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif kind == "garbage header":
        weights.write_bytes(b"\xff" * 64)
    elif kind == "empty file":
        weights.write_bytes(b"")
    elif kind == "wrong shape":
        _rewrite_config(path, mlp_dim=64)
    elif kind == "missing tensor":
        tensors = {k: np.array(v) for k, v in checkpoint.safetensors_io.read(weights).items()}
        del tensors["final_norm.scale"]
        checkpoint.safetensors_io.write(weights, tensors)
    elif kind == "extra tensor":
        tensors = {k: np.array(v) for k, v in checkpoint.safetensors_io.read(weights).items()}
        tensors["rogue"] = np.zeros(3, np.float32)
        checkpoint.safetensors_io.write(weights, tensors)
    elif kind == "tokenizer mismatch":
        _rewrite_config(path, vocab_size=330)
        tensors = {k: np.array(v) for k, v in checkpoint.safetensors_io.read(weights).items()}
        tensors["embed"] = np.zeros((330, 32), np.float32)
        tensors["lm_head"] = np.zeros((32, 330), np.float32)
        checkpoint.safetensors_io.write(weights, tensors)
    elif kind == "bad tokenizer":
        (path / "tokenizer.model").write_bytes(b"junk")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing config", "config.json: missing"),
        ("missing weights", "model.safetensors: file not found"),
        ("bad json", "config.json: not valid JSON"),
        ("unknown key", r"unknown config keys \['mystery'\]"),
        ("bad value", "norm must be one of"),
        ("truncated", "truncated or corrupt"),
        ("garbage header", "corrupt safetensors header"),
        ("empty file", "truncated safetensors file"),
        ("wrong shape", r"tensor .layer_0.mlp.down_kernel. has shape \(96, 32\), expected \(64, 32\)"),
        ("missing tensor", r"missing tensors \['final_norm.scale'\]"),
        ("extra tensor", r"unexpected tensors \['rogue'\]"),
        ("tokenizer mismatch", "tokenizer has 320 pieces but the model's embedding has 330 rows"),
        ("bad tokenizer", "tokenizer.model: could not read"),
    ],
)
def test_damage_gets_a_typed_error(saved, kind, message):
    _corrupt(kind, saved)
    with pytest.raises(CheckpointError, match=message):
        gpt_jax.load(saved)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        gpt_jax.load(tmp_path / "nowhere")


def test_interrupted_save_keeps_the_previous_checkpoint(model, saved, monkeypatch):
    before = (saved / "model.safetensors").read_bytes()
    other = Generator.from_config(model.config, model.tokenizer, jax.random.key(99))

    def failing_write(path, tensors, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.safetensors_io, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(other, saved)
    monkeypatch.undo()
    assert (saved / "model.safetensors").read_bytes() == before
    gpt_jax.load(saved)  # still loads
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".")] == []  # temp dir cleaned up
    checkpoint.save(other, saved)  # and a later save replaces it
    assert (saved / "model.safetensors").read_bytes() != before


def test_directory_without_tokenizer_loads_for_ids(model, tmp_path):
    bare = checkpoint.save(Generator(model.config, model.params), tmp_path / "bare")
    g = gpt_jax.load(bare)
    assert g.tokenizer is None
    assert len(g.generate_ids([[1, 2]], max_new_tokens=3, ignore_eos=True).token_ids[0]) == 3


def test_scalars_keep_their_rank(tmp_path):
    checkpoint.safetensors_io.write(tmp_path / "s.safetensors", {"count": np.int32(7), "v": np.ones((2, 3))})
    back = checkpoint.safetensors_io.read(tmp_path / "s.safetensors")
    assert back["count"].shape == () and int(back["count"]) == 7 and back["v"].shape == (2, 3)


def test_half_precision_storage(model, tmp_path):
    path = checkpoint.save(model, tmp_path / "half", weights_dtype="float16")
    raw = checkpoint.safetensors_io.read(path / "model.safetensors")
    assert all(v.dtype == np.float16 for v in raw.values())
    g = gpt_jax.load(path)
    assert g.params["embed"].dtype == np.float32
    np.testing.assert_allclose(g.params["embed"], model.params["embed"], rtol=1e-3, atol=1e-4)
    with pytest.raises(CheckpointError, match="weights_dtype must be"):
        checkpoint.save(model, tmp_path / "bad", weights_dtype="int4")
