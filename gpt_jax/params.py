"""Parameter trees: the nested dict a model applies with, and the flat `"layer_0.attn.q_kernel"` names files use.

Checkpoints (own and Hugging Face, in and out) and quantization all read these, so they sit below all of them.
"""

from __future__ import annotations

import jax

from gpt_jax.config import ModelConfig
from gpt_jax.model import init_params


def flatten(params: dict, prefix: str = "") -> dict[str, jax.Array]:
    """Nested dict -> {"layer_0.attn.q_kernel": array, ...}."""
    out = {}
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def unflatten(flat: dict[str, jax.Array]) -> dict:
    """{"layer_0.attn.q_kernel": array, ...} -> nested dict."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def param_shapes(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """The flat names, shapes and dtypes a checkpoint of `config` must hold (computed without allocating)."""
    return flatten(jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
