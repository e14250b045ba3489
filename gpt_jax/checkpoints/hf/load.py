"""Hugging Face checkpoint directories (GPT-2, Llama 1-3, Mistral, Mixtral, Qwen 2/3, Gemma 1-3, Phi-3) imported
into gpt_jax.

`hf_config.py` maps every config field that changes the computation or rejects it with a clear error. Weights are
converted one tensor at a time from memory-mapped safetensors files, and each tensor's mapped pages are released
as it is converted, so peak host memory stays near the size of the converted parameters.

Weight names and layouts are in `hf_names.py`, shared with the export.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from gpt_jax.checkpoints import safetensors_io
from gpt_jax.checkpoints.hf.config import config_from_hf, generation_defaults
from gpt_jax.checkpoints.hf.names import gpt2_mapping, gpt2_split, llama_mapping
from gpt_jax.checkpoints.tokenizer_files import load_tokenizer
from gpt_jax.decoding.generator import Generator
from gpt_jax.errors import CheckpointError, check
from gpt_jax.model.params import unflatten
from gpt_jax.model.transformer import param_shapes
from gpt_jax.util.json_files import read_json_object


class _WeightFiles:
    """The tensors of `model.safetensors` or of the shards an index names, memory-mapped, by name."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        single = directory / "model.safetensors"
        if index.is_file():
            weight_map = read_json_object(index).get("weight_map")
            check(
                isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values()),
                CheckpointError,
                f"{index}: not a valid safetensors index (weight_map must be an object of file names)",
            )
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                check(
                    shard and Path(shard).name == shard and shard not in (".", ".."),
                    CheckpointError,
                    f"{index}: shard name {shard!r} is not a plain file name in the model directory",
                )
                check(
                    (directory / shard).is_file(),
                    CheckpointError,
                    f"{directory / shard}: missing shard named in {index.name}",
                )
        else:
            bins = [p.name for p in directory.glob("*.bin")]
            check(
                single.is_file(),
                CheckpointError,
                f"{single}: missing"
                + (f" (found {bins}: pickle weights are never loaded; convert to safetensors)" if bins else ""),
            )
            shards = [single.name]
        self.files = [safetensors_io.SafetensorsFile(directory / s) for s in shards]
        self.where = {name: f for f in self.files for name in f.names}

    def names(self) -> set[str]:
        return set(self.where)


def _strip_prefix(names: set[str], model_type: str) -> dict[str, str]:
    """GPT2Model checkpoints omit 'transformer.'; map canonical names to the names present."""
    if model_type == "gpt2" and not any(n.startswith("transformer.") for n in names):
        return {f"transformer.{n}" if n != "lm_head.weight" else n: n for n in names}
    return {n: n for n in names}


def load(directory: Path, raw: dict, dtype: str | None = None, mesh=None) -> Generator:
    """Load a Hugging Face directory as a `Generator` (weights converted to `dtype`, default float32)."""
    gen_path = directory / "generation_config.json"
    generation = read_json_object(gen_path) if gen_path.is_file() else None
    config = config_from_hf(raw, generation, str(directory / "config.json")).replace(dtype=dtype or "float32")
    files = _WeightFiles(directory)
    present = _strip_prefix(files.names(), raw["model_type"])
    mapping = (
        llama_mapping(config, fused=raw["model_type"] == "phi3") if config.position == "rope" else gpt2_mapping(config)
    )
    needed = {hf for hf, _, _ in mapping.values()}
    if config.position == "learned":
        needed |= {f"transformer.h.{i}.attn.c_attn.{p}" for i in range(config.n_layers) for p in ("weight", "bias")}
    missing = sorted(needed - set(present))
    check(not missing, CheckpointError, f"{directory}: missing weights {missing[:6]}")

    expected = param_shapes(config)
    target = jnp.dtype(config.dtype)
    flat: dict = {}

    def take(hf_name: str) -> np.ndarray:
        actual = present[hf_name]
        return files.where[actual].get(actual)

    def converted_view(ours: str, name: str, to_ours, want: tuple[int, ...]) -> np.ndarray:
        w = take(name)
        check(
            safetensors_io.is_float(w.dtype),
            CheckpointError,
            f"{directory}: weight {name!r} is stored as {w.dtype}; weights must be floating point",
        )
        try:
            view = to_ours(w, config)
        except ValueError:
            raise CheckpointError(
                f"{directory}: weight {name!r} has shape {tuple(w.shape)}, which does not fit {ours!r} {want}"
            ) from None
        check(
            tuple(view.shape) == want,
            CheckpointError,
            f"{directory}: weight {name!r} converts to shape {tuple(view.shape)}, expected {want} for {ours!r}",
        )
        return view

    for ours, (hf_name, to_ours, _) in mapping.items():  # one weight at a time (safetensors_io.to_device)
        view = converted_view(ours, hf_name, to_ours, tuple(expected[ours].shape))
        flat[ours] = safetensors_io.to_device(files.where[present[hf_name]], present[hf_name], view, target)
    if config.position == "learned":
        for i in range(config.n_layers):
            for p in ("weight", "bias"):
                name = f"transformer.h.{i}.attn.c_attn.{p}"
                w = take(name)
                check(
                    w.shape[-1] == 3 * config.n_heads * config.head_dim,
                    CheckpointError,
                    f"{directory}: weight {name!r} has shape {tuple(w.shape)}, expected last axis "
                    f"{3 * config.n_heads * config.head_dim}",
                )
                for ours, part in gpt2_split(name, w, config).items():
                    view = converted_view(ours, name, lambda w, c: part, tuple(expected[ours].shape))
                    flat[ours] = jnp.asarray(view, dtype=target)
                files.where[present[name]].release(present[name])
    tokenizer = load_tokenizer(directory, config, exact=False)
    defaults = generation_defaults(generation, str(gen_path))
    return Generator(config, unflatten(flat), tokenizer, mesh, defaults)
