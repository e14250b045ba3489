"""Parameter trees: the nested dict a model applies with, and the flat `"layer_0.attn.q_kernel"` names files and
the table of weights (`model.weight_infos`) use. Nothing here knows the model, so everything may import it.
"""

from __future__ import annotations

import jax


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


def map_named(fn, params: dict, prefix: str = "") -> dict:
    """The nested dict with every leaf replaced by fn(flat name, leaf)."""
    return {
        name: map_named(fn, value, f"{prefix}{name}.") if isinstance(value, dict) else fn(f"{prefix}{name}", value)
        for name, value in params.items()
    }
