"""Model directories: `config.json` + `model.safetensors` + `tokenizer.model` (or `tokenizer.json`).

`save` refuses to write over anything that is not a checkpoint, then writes into a temporary sibling directory and
renames it into place (see safe_write.py): an interrupted save never leaves a half-written directory under the
target name, and a previous checkpoint there stays loadable until the new one is complete. `load` validates
everything before building anything; no pickle is ever read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.checkpoints import safetensors_io
from gpt_jax.checkpoints.hf.export import export_tensors
from gpt_jax.checkpoints.hf.load import load as load_hf
from gpt_jax.checkpoints.safe_write import as_path, atomic_directory, check_extra_files, check_target
from gpt_jax.checkpoints.tokenizer_files import SENTENCEPIECE_FILE, load_tokenizer, tokenizer_files
from gpt_jax.decoding.generator import Generator
from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.errors import CheckpointError, ConfigError, InputError, check
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.params import flatten, unflatten
from gpt_jax.model.transformer import param_shapes
from gpt_jax.parallel import sharding
from gpt_jax.text.chat import TEMPLATE_FILE, TOKENIZER_CONFIG
from gpt_jax.util.json_files import read_json_object

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", SENTENCEPIECE_FILE
DEFAULTS_FILE = "generation_settings.json"  # the model's own default settings ({name: value}), when it has any
OWN_FILES = (
    CONFIG_FILE,
    WEIGHTS_FILE,
    SENTENCEPIECE_FILE,
    "tokenizer.json",
    TEMPLATE_FILE,
    TOKENIZER_CONFIG,
    DEFAULTS_FILE,
)
EXTRA_FILES_KEY = "gpt_jax_extra_files"  # safetensors metadata: the extra files a save wrote (its own, too)
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "shakespeare"
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")


def own_files(directory: Path) -> set[str]:
    """The files a previous save wrote into `directory` (the standard ones plus the extras it recorded); the standard
    ones alone when there is no readable checkpoint there."""
    try:
        extras = json.loads(safetensors_io.read_metadata(directory / WEIGHTS_FILE).get(EXTRA_FILES_KEY, "[]"))
    except (CheckpointError, OSError, json.JSONDecodeError):
        extras = []
    return set(OWN_FILES) | {x for x in extras if isinstance(x, str)}


def save(
    generator: Generator,
    directory: str | os.PathLike,
    format: str = "native",
    extra_files: dict[str, bytes] | None = None,
    weights_dtype: str | None = None,
) -> Path:
    """Write `generator` as a model directory, atomically. format: "native" or "hf" (Hugging Face layout).

    `directory` must be new, empty or a checkpoint written by `save`; anything else is refused before anything is
    written. `extra_files` ({plain name: bytes}) are stored beside the checkpoint. `weights_dtype` ("float16",
    "bfloat16", "float32") stores the tensors in that dtype (loading converts them back to the config's dtype).
    """
    check(
        isinstance(generator, Generator),
        InputError,
        f"generator must be a gpt_jax.Generator, got {type(generator).__name__}",
    )
    check(format in ("native", "hf"), CheckpointError, f"format must be 'native' or 'hf', got {format!r}")
    check(
        weights_dtype is None or weights_dtype in WEIGHT_DTYPES,
        CheckpointError,
        f"weights_dtype must be 'float32', 'float16' or 'bfloat16', got {weights_dtype!r}",
    )
    target = as_path(directory)
    extras = check_extra_files(extra_files, OWN_FILES)
    check_target(target, own_files(target))
    if format == "hf":
        config_dict, tensors = export_tensors(generator.config, generator.params)
    else:
        config_dict = generator.config.to_dict()
        tensors = {k: np.asarray(v) for k, v in flatten(generator.params).items()}
    if weights_dtype is not None:
        tensors = {k: np.asarray(jnp.asarray(v).astype(weights_dtype)) for k, v in tensors.items()}
    metadata = {"format": "np", EXTRA_FILES_KEY: json.dumps(sorted(extras))}
    with atomic_directory(target) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2) + "\n")
        safetensors_io.write(tmp / WEIGHTS_FILE, tensors, metadata=metadata)
        if generator.tokenizer is not None:
            for name, data in tokenizer_files(generator.tokenizer).items():
                (tmp / name).write_bytes(data)
        if generator.defaults and format == "native":
            (tmp / DEFAULTS_FILE).write_text(json.dumps(generator.defaults, indent=2) + "\n")
        for name, data in extras.items():
            (tmp / name).write_bytes(data)
    return target


def read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    check(path.is_file(), CheckpointError, f"{path}: missing (a model directory needs {CONFIG_FILE})")
    return read_json_object(path)


def check_layer_count(config: ModelConfig, names, source: str) -> None:
    """The config's layer count must be the one the tensors hold: checked before any shape is computed, so a config
    claiming 200000 layers fails at once."""
    layers = {n.split(".")[0] for n in names if n.startswith("layer_")}
    check(
        len(layers) == config.n_layers,
        CheckpointError,
        f"{source}: the config says n_layers={config.n_layers}, the weights hold {len(layers)} layers",
    )


def check_tensors(tensors: dict[str, np.ndarray], expected: dict[str, jax.ShapeDtypeStruct], source: str) -> None:
    """Same names, same shapes, floating-point values (the dtype is converted to the config's)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    check(not missing, CheckpointError, f"{source}: missing tensors {missing[:8]}")
    check(not extra, CheckpointError, f"{source}: unexpected tensors {extra[:8]}")
    for name, spec in expected.items():
        check(
            safetensors_io.is_float(tensors[name].dtype),
            CheckpointError,
            f"{source}: tensor {name!r} is stored as {tensors[name].dtype}; weights must be floating point",
        )
        check(
            tuple(tensors[name].shape) == tuple(spec.shape),
            CheckpointError,
            f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(spec.shape)}",
        )


def load(path: str | os.PathLike | None = None, *, dtype: str | None = None, mesh=None) -> Generator:
    """Load a model directory: this project's own, or a Hugging Face GPT-2 / Llama / Mistral / Qwen / Gemma one.

    With no path, the bundled default model. `dtype` ("float32", "bfloat16", "float16") converts the weights.
    `mesh` (a jax.sharding.Mesh with axes ("data", "model")) shards the parameters and the generation.
    """
    directory = as_path(path, "path") if path is not None else DEFAULT_MODEL
    check(dtype is None or dtype in WEIGHT_DTYPES, InputError, f"dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")
    mesh = sharding.auto_axes(mesh) if mesh is not None else None  # checked before anything is read
    check(directory.is_dir(), CheckpointError, f"{directory}: not a directory (expected a model directory)")
    raw = read_config(directory)
    if "model_type" in raw:
        return load_hf(directory, raw, dtype=dtype, mesh=mesh)
    try:
        config = ModelConfig.from_dict(raw, source=str(directory / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if dtype is not None:
        config = config.replace(dtype=dtype)
    weights = directory / WEIGHTS_FILE
    file = safetensors_io.SafetensorsFile(weights)
    tensors = {name: file.get(name) for name in file.names}
    check_layer_count(config, tensors, str(weights))
    check_tensors(tensors, param_shapes(config), str(weights))
    target = jnp.dtype(config.dtype)
    params = unflatten({k: safetensors_io.to_device(file, k, v, target) for k, v in tensors.items()})
    defaults = read_json_object(directory / DEFAULTS_FILE) if (directory / DEFAULTS_FILE).is_file() else {}
    try:
        GenerationSettings.of(defaults)
    except InputError as e:
        raise CheckpointError(f"{directory / DEFAULTS_FILE}: {e}") from None
    return Generator(config, params, load_tokenizer(directory, config), mesh, defaults)
