"""Helpers every layer may use: JSON files read with typed errors, the command lines' parser, the compile cache.

Imports: `gpt_jax.errors` only.
"""
