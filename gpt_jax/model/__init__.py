"""Steps 3 and 4: the model config, the pure Flax decoder-only transformer, its layers, rotary positions, experts,
the explicit KV cache, int8 weights, parameter trees and the row-invariant arithmetic of decode steps.

Imports: `errors`, `util`.
"""
