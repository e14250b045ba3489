"""Meshes and partition rules: parameters, caches and batches placed on a `("data", "model")` mesh.

Imports: `errors`, `model`. Multi-host generation (`gpt_jax.distributed`) sits at the top, above the pipeline.
"""

from gpt_jax.parallel.sharding import make_mesh

__all__ = ["make_mesh"]
