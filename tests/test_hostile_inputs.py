"""Hostile but realistic input to every public entry point: each case returns the right result or raises a
`GptJaxError` subclass naming the problem, before anything is compiled; damaged files are CheckpointErrors that name
the file and the field."""

import json
import struct
import time

import jax
import numpy as np
import pytest

import gpt_jax
from gpt_jax import CheckpointError, ConfigError, Generator, GptJaxError, InputError
from gpt_jax.checkpoints import checkpoint
from gpt_jax.model.presets import LLAMA_TINY

CFG = LLAMA_TINY.replace(vocab_size=320, pad_id=3)


@pytest.fixture(scope="module")
def gen(small_tokenizer):
    return Generator.from_config(CFG, small_tokenizer, jax.random.key(2))


@pytest.fixture()
def fresh(gen):
    """A Generator that has compiled nothing yet (same weights: building one compiles nothing)."""
    return Generator(gen.config, gen.params, gen.tokenizer)


@pytest.fixture(scope="module")
def native_dir(gen, tmp_path_factory):
    return checkpoint.save(gen, tmp_path_factory.mktemp("native") / "m")


@pytest.fixture(scope="module")
def hf_dir(gen, tmp_path_factory):
    return checkpoint.save(gen, tmp_path_factory.mktemp("hf") / "m", format="hf")


CALLS = [  # (entry point, args, kwargs, error, part of the message)
    ("generate_ids", ([[True, True]],), {}, InputError, "not token ids"),
    ("generate_ids", ([[1, 2]],), {"min_new_tokens": 5, "max_new_tokens": 3}, InputError, "min_new_tokens=5 is more"),
    ("generate_ids", ([[1, 2]],), {"max_new_tokens": 10**400}, InputError, "max_new_tokens must be int"),
    ("generate_ids", ([[1, 2]],), {"temperature": 10**400}, InputError, "temperature must be float"),
    ("generate_ids", ([[1, 2]],), {"seed": 10**400}, InputError, "seed must be an integer"),
    ("generate_ids", ([[1, 2]],), {"n": 10**400}, InputError, "n must be an integer"),
    ("generate_ids", ([[1, 2]],), {"max_tokens": 5}, InputError, "did you mean 'max_new_tokens'"),
    ("generate_ids", ([[1, 2]],), {"tempreature": 0.5}, InputError, "did you mean 'temperature'"),
    ("generate_ids", ([[1, 2]],), {"foo": 1}, InputError, "unknown setting 'foo'"),
    ("generate_ids", ([[1, 2]],), {"stop": "x"}, InputError, "stop strings need text prompts"),
    ("generate_ids", ([[1, 2]],), {"logit_bias": {1: float("nan")}}, InputError, "logit_bias values"),
    ("generate_ids", ([[1, 2]],), {"logit_bias": {True: 1.0}}, InputError, "logit_bias keys"),
    ("generate_ids", ([[1, 2]],), {"row_seeds": [1, 2]}, InputError, "row_seeds must be a scalar or a list of 1"),
    ("generate_ids", (np.zeros((1, 2), np.float32),), {}, InputError, "prompts must be a non-empty list"),
    ("generate_ids", ([[1, 2]] * 2,), {"n": 64, "max_new_tokens": 1}, None, None),  # 128 rows: allowed
    ("stream_ids", ([1, 2],), {"n": 3}, InputError, "n must be 1"),
    ("stream", ("ROMEO:",), {"n": 3}, InputError, "n must be 1"),
    ("stream", ("ROMEO:",), {"top_logprobs": 5}, InputError, "top_logprobs needs generate"),
    ("stream", ("\ud800",), {}, InputError, "not valid Unicode text"),
    ("stream", ("ROMEO:",), {"stop": ["\udcff"]}, InputError, "not valid Unicode text"),
    ("generate", ("\ud800",), {}, InputError, "not valid Unicode text"),
    ("generate", (["ok", 3],), {}, InputError, "prompt 1 must be a string"),
    ("generate", ("ok",), {"max_tokens": 3}, InputError, "did you mean 'max_new_tokens'"),
    ("score", ("",), {}, InputError, "scoring needs at least 2 tokens"),
    ("score", ("\ud800",), {}, InputError, "not valid Unicode text"),
    ("score", ("To be",), {"batch_size": -1}, InputError, "batch_size must be an integer"),
    ("score", ("To be",), {"batch_size": 0}, InputError, "batch_size must be an integer"),
    ("score", ("To be",), {"batch_size": 1.5}, InputError, "batch_size must be an integer"),
    ("score", ("To be",), {"batch_size": None}, InputError, "batch_size must be an integer"),
    ("score_ids", ([[1]],), {}, InputError, "scoring needs at least 2"),
    ("score_ids", ([],), {}, InputError, "sequences must be a non-empty list"),
]


@pytest.mark.parametrize("method, args, kwargs, error, message", CALLS, ids=lambda x: str(x)[:40])
def test_every_entry_point_refuses_bad_input_by_name(fresh, method, args, kwargs, error, message):
    g = fresh
    if error is None:
        out = getattr(g, method)(*args, **kwargs)
        assert len(out.token_ids) == 128
        return
    with pytest.raises(error, match=message):
        getattr(g, method)(*args, **kwargs)  # stream/stream_ids check when called, not at the first piece
    assert g.trace_count == 0  # refused before anything was compiled


def test_numpy_scalars_stand_for_their_values(gen):
    kw = dict(max_new_tokens=6, ignore_eos=True)
    plain = gen.generate_ids([[1, 2, 3]], temperature=0.7, seed=4, **kw)
    numpy = gen.generate_ids([[1, 2, 3]], temperature=np.array(0.7), seed=np.uint32(4), **kw)
    assert numpy.token_ids == plain.token_ids
    assert gen.generate_ids([np.array([1, 2, 3])], temperature=0.7, seed=4, **kw).token_ids == plain.token_ids


def test_a_decode_that_cannot_fit_in_memory_is_refused_up_front(gen, monkeypatch):
    monkeypatch.setattr("gpt_jax.decoding.memory.available_memory_bytes", lambda mesh=None: 1 << 10)
    with pytest.raises(InputError, match="GiB for its KV cache"):
        gen.generate_ids([[1, 2, 3]] * 8, max_new_tokens=100)


def test_a_server_whose_slots_cannot_fit_is_refused_before_it_compiles(gen, monkeypatch):
    from gpt_jax.decoding.memory import serving_bytes
    from gpt_jax.serving.engine import Engine
    from gpt_jax.serving.options import default_chunk

    from gpt_jax.serving.constraint_pool import DEFAULT_STATES, table_bytes

    need = serving_bytes(gen.config, 8, 128, default_chunk(128), 1)
    table = table_bytes(gen.config.vocab_size, DEFAULT_STATES)  # the constraint table, on by default
    assert table == DEFAULT_STATES * (4 * -(-gen.config.vocab_size // 32) + 2 + 3 * 4 + 64 * 8)  # mask, per state, edges
    monkeypatch.setattr("gpt_jax.decoding.memory.available_memory_bytes", lambda mesh=None: need - 1)
    with pytest.raises(InputError, match="8 slots of 128 positions need about"):
        Engine(gen, slots_count=8, max_len=128, prefix_cache_gb=0, constraint_states=0)
    monkeypatch.setattr("gpt_jax.decoding.memory.available_memory_bytes", lambda mesh=None: need + table - 1)
    with pytest.raises(InputError, match="GiB for the constraint table.*or --constraint-states"):
        Engine(gen, slots_count=8, max_len=128, prefix_cache_gb=0)
    monkeypatch.setattr("gpt_jax.decoding.memory.available_memory_bytes", lambda mesh=None: need + table + 2**29)
    with pytest.raises(InputError, match="up to 1.0 GiB for the prefix cache.*or --prefix-cache-gb"):
        Engine(gen, slots_count=8, max_len=128)  # the default budget, 1 GiB, counts too
    Engine(gen, slots_count=8, max_len=128, prefix_cache_gb=0.5).close()


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((123,), {}, InputError, "path must be a str or os.PathLike"),
        ((b"/tmp",), {}, InputError, "path must be a str or os.PathLike"),
        (("",), {}, InputError, "must be a non-empty path"),
        ((None,), {"mesh": "data=2"}, InputError, "mesh must be a jax.sharding.Mesh"),
        ((None,), {"dtype": "int8"}, InputError, "dtype must be one of"),
    ],
)
def test_load_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        gpt_jax.load(*args, **kwargs)


def rewrite_header(path, edit):
    """Apply edit(header dict) to a safetensors file's JSON header, keeping the data as it is."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def set_entry(name, key, value):
    return lambda h: h[name].__setitem__(key, value)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    data = edit(data)
    path.write_text(json.dumps(data))


NATIVE_DAMAGE = [
    (
        "string offsets",
        lambda d: rewrite_header(d / "model.safetensors", set_entry("embed", "data_offsets", ["0", "8"])),
    ),
    ("float shape", lambda d: rewrite_header(d / "model.safetensors", set_entry("embed", "shape", [2.5, 32]))),
    ("huge shape", lambda d: rewrite_header(d / "model.safetensors", set_entry("embed", "shape", [2**62, 2**62]))),
    ("negative shape", lambda d: rewrite_header(d / "model.safetensors", set_entry("embed", "shape", [-320, -32]))),
    ("integer weights", lambda d: rewrite_header(d / "model.safetensors", set_entry("embed", "dtype", "I32"))),
    ("null config", lambda d: (d / "config.json").write_text("null")),
    ("number config", lambda d: (d / "config.json").write_text("42")),
    ("infinite eps", lambda d: edit_json(d / "config.json", lambda c: {**c, "norm_eps": float("inf")})),
    ("200000 layers", lambda d: edit_json(d / "config.json", lambda c: {**c, "n_layers": 200000})),
    ("2**30 context", lambda d: edit_json(d / "config.json", lambda c: {**c, "max_seq_len": 2**30})),
    ("one layer too many", lambda d: edit_json(d / "config.json", lambda c: {**c, "n_layers": 3})),
]
NATIVE_MESSAGES = {
    "string offsets": "malformed or unsupported header entry",
    "float shape": "malformed or unsupported header entry",
    "huge shape": "truncated or corrupt",
    "negative shape": "malformed or unsupported header entry",
    "integer weights": "weights must be floating point",
    "null config": "expected a JSON object, got NoneType",
    "number config": "expected a JSON object, got int",
    "infinite eps": "norm_eps must be a finite number",
    "200000 layers": "n_layers must be at most 1024",
    "2**30 context": "max_seq_len must be at most",
    "one layer too many": "the config says n_layers=3, the weights hold 2 layers",
}


@pytest.mark.parametrize("kind, damage", NATIVE_DAMAGE, ids=[k for k, _ in NATIVE_DAMAGE])
def test_damaged_native_checkpoints(native_dir, tmp_path, kind, damage):
    d = tmp_path / "m"
    checkpoint.save(gpt_jax.load(native_dir), d)
    damage(d)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=NATIVE_MESSAGES[kind]):
        gpt_jax.load(d)
    assert time.perf_counter() - start < 30  # fails at once, not after building the model


HF_DAMAGE = {
    "rope_scaling a string": (lambda c: {**c, "rope_scaling": "yarn"}, "field 'rope_scaling' must be dict"),
    "eos a string": (lambda c: {**c, "eos_token_id": "2"}, "field 'eos_token_id' must be"),
    "pad a string": (lambda c: {**c, "pad_token_id": "0"}, "field 'pad_token_id' must be int"),
    "window a string": (lambda c: {**c, "model_type": "mistral", "sliding_window": "4096"}, "'sliding_window' must"),
    "heads a float": (lambda c: {**c, "num_attention_heads": 4.0}, "'num_attention_heads' must be int"),
    "missing width": (lambda c: {k: v for k, v in c.items() if k != "hidden_size"}, "missing field 'hidden_size'"),
    "bool as int": (lambda c: {**c, "num_hidden_layers": True}, "'num_hidden_layers' must be int"),
}


@pytest.mark.parametrize("kind", list(HF_DAMAGE))
def test_damaged_hugging_face_configs(hf_dir, tmp_path, kind):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(hf_dir, d)
    edit, message = HF_DAMAGE[kind]
    edit_json(d / "config.json", edit)
    with pytest.raises(CheckpointError, match=message) as info:
        gpt_jax.load(d)
    assert "config.json" in str(info.value)


def test_damaged_hugging_face_side_files(hf_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(hf_dir, d)
    (d / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json: not valid JSON"):
        gpt_jax.load(d)
    (d / "generation_config.json").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    with pytest.raises(CheckpointError, match="weight_map must be an object"):
        gpt_jax.load(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../../etc/passwd"}}))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        gpt_jax.load(d)
    (d / "model.safetensors.index.json").unlink()
    assert gpt_jax.load(d).config.n_layers == 2  # and undamaged it loads


def test_every_error_is_a_value_error_subclass():
    for cls in (InputError, CheckpointError, ConfigError):
        assert issubclass(cls, GptJaxError) and issubclass(cls, ValueError)


def test_token_id_stops_are_refused_by_the_text_calls(gen):
    for call in (lambda: gen.generate("ROMEO:", stop_ids=[[5]]), lambda: next(gen.stream("ROMEO:", stop_ids=[[5]]))):
        with pytest.raises(InputError, match="stop_ids is a setting of generate_ids"):
            call()
    assert gen.generate_ids([[1, 2]], stop_ids=[[5]], max_new_tokens=2).finish_reasons[0] in ("length", "stop", "eos")
