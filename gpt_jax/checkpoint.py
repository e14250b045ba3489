"""Model directories: `config.json` + `model.safetensors` + `tokenizer.model`.

`save` writes into a temporary sibling directory and renames it into place, so an interrupted save never leaves a
half-written directory under the target name, and a previous checkpoint there stays loadable until the new one is
complete. `load` validates everything before building anything; no pickle is ever read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import hf, safetensors_io
from gpt_jax.config import ModelConfig
from gpt_jax.errors import CheckpointError, ConfigError, check
from gpt_jax.generate import Generator
from gpt_jax.hf_export import export_tensors
from gpt_jax.params import flatten, param_shapes, unflatten
from gpt_jax.tokenizer_files import SENTENCEPIECE_FILE, load_tokenizer

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", SENTENCEPIECE_FILE
DEFAULT_MODEL = Path(__file__).parent / "assets" / "shakespeare"


def atomic_directory(target: Path):
    """Context manager: yields a temporary directory that replaces `target` only if the block completes."""

    class _Atomic:
        def __enter__(self):
            target.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            for f in self.tmp.iterdir():
                f.chmod(0o644)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            self.tmp.chmod(0o755)
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                os.replace(target, old)
            os.replace(self.tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return False

    return _Atomic()


def save(
    generator: Generator,
    directory: str | os.PathLike,
    format: str = "native",
    extra_files: dict[str, bytes] | None = None,
    weights_dtype: str | None = None,
) -> Path:
    """Write `generator` as a model directory, atomically. format: "native" or "hf" (Hugging Face layout).

    `weights_dtype` ("float16", "bfloat16", "float32") stores the tensors in that dtype (loading converts them
    back to the config's dtype); default: as they are.
    """
    check(format in ("native", "hf"), CheckpointError, f"format must be 'native' or 'hf', got {format!r}")
    target = Path(directory)
    if format == "hf":
        config_dict, tensors = export_tensors(generator.config, generator.params)
    else:
        config_dict = generator.config.to_dict()
        tensors = {k: np.asarray(v) for k, v in flatten(generator.params).items()}
    if weights_dtype is not None:
        check(
            weights_dtype in ("float32", "float16", "bfloat16"),
            CheckpointError,
            f"weights_dtype must be 'float32', 'float16' or 'bfloat16', got {weights_dtype!r}",
        )
        tensors = {k: np.asarray(jnp.asarray(v).astype(weights_dtype)) for k, v in tensors.items()}
    with atomic_directory(target) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(config_dict, indent=2) + "\n")
        safetensors_io.write(tmp / WEIGHTS_FILE, tensors, metadata={"format": "np"})
        if generator.tokenizer is not None:
            for name, data in generator.tokenizer.files().items():
                (tmp / name).write_bytes(data)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return target


def read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    check(path.is_file(), CheckpointError, f"{path}: missing (a model directory needs {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None


def check_tensors(tensors: dict[str, np.ndarray], expected: dict[str, jax.ShapeDtypeStruct], source: str) -> None:
    """Same names, same shapes; dtype may differ (it is converted)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    check(not missing, CheckpointError, f"{source}: missing tensors {missing[:8]}")
    check(not extra, CheckpointError, f"{source}: unexpected tensors {extra[:8]}")
    for name, spec in expected.items():
        check(
            tuple(tensors[name].shape) == tuple(spec.shape),
            CheckpointError,
            f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(spec.shape)}",
        )


def load(path: str | os.PathLike | None = None, *, dtype: str | None = None, mesh=None) -> Generator:
    """Load a model directory: this project's own, or a Hugging Face GPT-2 / Llama / Mistral one.

    With no path, the bundled default model. `dtype` ("float32", "bfloat16", "float16") converts the weights.
    `mesh` (a jax.sharding.Mesh with axes ("data", "model")) shards the parameters and the generation.
    """
    directory = Path(path) if path is not None else DEFAULT_MODEL
    check(directory.is_dir(), CheckpointError, f"{directory}: not a directory (expected a model directory)")
    raw = read_config(directory)
    if "model_type" in raw:
        return hf.load(directory, raw, dtype=dtype, mesh=mesh)
    try:
        config = ModelConfig.from_dict(raw, source=str(directory / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if dtype is not None:
        config = config.replace(dtype=dtype)
    weights = directory / WEIGHTS_FILE
    tensors = safetensors_io.read(weights)
    check_tensors(tensors, param_shapes(config), str(weights))
    params = unflatten({k: jnp.asarray(v, dtype=config.dtype) for k, v in tensors.items()})
    return Generator(config, params, load_tokenizer(directory, config), mesh)
