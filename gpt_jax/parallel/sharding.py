"""Scale-out on JAX's own runtime: a ("data", "model") mesh and partition rules.

Attention heads, MLP width and (where it divides) the vocabulary go on `model`; the batch and the KV cache's rows go
on `data`, the cache's kv heads on `model`. XLA inserts the collectives. The same code runs on one CPU, a Colab TPU
chip, forced CPU devices in tests, and a multi-host TPU slice.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpt_jax.errors import InputError, check
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.layers import HEADS, KV_HEADS, MLP_WIDTH, VOCAB, WeightInfo
from gpt_jax.model.params import map_named
from gpt_jax.model.quantize import Int8Kernel
from gpt_jax.model.transformer import weight_infos

AXES = ("data", "model")
RULES = {HEADS: "model", KV_HEADS: "model", MLP_WIDTH: "model", VOCAB: "model"}  # logical axis -> mesh axis


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A data x model mesh over `devices` (default: all of them, in order)."""
    devices = list(jax.devices() if devices is None else devices)
    check(
        isinstance(data, int) and isinstance(model, int) and data >= 1 and model >= 1,
        InputError,
        f"mesh sizes must be integers >= 1, got data={data!r}, model={model!r}",
    )
    check(
        data * model == len(devices),
        InputError,
        f"mesh data={data} x model={model} needs {data * model} devices, {len(devices)} are available",
    )
    return Mesh(np.array(devices).reshape(data, model), AXES)


def parse_mesh(text: str) -> Mesh:
    """'data=2,model=4' -> a mesh (for the command line)."""
    sizes = {"data": 1, "model": 1}
    for part in text.split(","):
        name, _, value = part.partition("=")
        check(
            name.strip() in sizes and value.strip().isdigit(),
            InputError,
            f"--mesh must look like data=2,model=4, got {text!r}",
        )
        sizes[name.strip()] = int(value)
    return make_mesh(sizes["data"], sizes["model"])


def check_divisible(config: ModelConfig, mesh: Mesh) -> None:
    """Heads, kv heads and MLP width must divide over the model axis."""
    m = mesh.shape["model"]
    for name in ("n_heads", "n_kv_heads", "mlp_dim"):
        value = getattr(config, name)
        check(
            value % m == 0,
            InputError,
            f"{name}={value} does not divide over the mesh's model axis of size {m}; pick a model axis that divides it",
        )


def _spec(info: WeightInfo, config: ModelConfig, model_size: int) -> P:
    """A weight's PartitionSpec from its declared logical axes; the vocabulary only where it divides."""
    vocab_ok = config.vocab_size % model_size == 0
    return P(*(None if a == VOCAB and not vocab_ok else RULES.get(a) for a in info.axes))


def param_shardings(config: ModelConfig, params: dict, mesh: Mesh) -> dict:
    """A NamedSharding per parameter (an Int8Kernel's scale follows its kernel's output axes)."""
    check_divisible(config, mesh)
    infos, m = weight_infos(config), mesh.shape["model"]

    def place(name, value):
        spec = _spec(infos[name], config, m)
        if isinstance(value, Int8Kernel):
            scale_spec = P(*tuple(spec)[value.in_axes :])
            return value.replace(q=NamedSharding(mesh, spec), scale=NamedSharding(mesh, scale_spec))
        return NamedSharding(mesh, spec)

    return map_named(place, params)


def shard_params(config: ModelConfig, params: dict, mesh: Mesh) -> dict:
    return jax.device_put(params, param_shardings(config, params, mesh))


def cache_spec() -> P:
    """KV cache [B*K, ...] (rows and kv heads merged, row-major): rows on data, kv heads on model."""
    return P(("data", "model"), None, None)


def batch_spec() -> P:
    """A batch of rows [B, ...]: rows on data."""
    return P("data")


def auto_axes(mesh) -> Mesh:
    """`mesh` with both axes in JAX's Auto mode, the mode the partition rules and sharding constraints are written
    for. `jax.make_mesh` makes Explicit axes by default (sharding in types); the same devices in the same order
    serve either way, so nothing about placement changes."""
    check(
        isinstance(mesh, Mesh),
        InputError,
        f"mesh must be a jax.sharding.Mesh with axes {AXES} (e.g. gpt_jax.make_mesh(data=2, model=4) or "
        f"jax.make_mesh((2, 4), {AXES})), got {type(mesh).__name__}",
    )
    check(tuple(mesh.axis_names) == AXES, InputError, f"mesh axes must be {AXES}, got {tuple(mesh.axis_names)}")
    auto = jax.sharding.AxisType.Auto
    if all(t == auto for t in getattr(mesh, "axis_types", (auto,) * len(AXES))):
        return mesh
    return Mesh(mesh.devices, AXES, axis_types=(auto,) * len(AXES))
