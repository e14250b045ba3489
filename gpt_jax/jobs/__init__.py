"""Batch jobs: `gpt-jax batch` (OpenAI Batch API files through the server's engine, resumable) and Ray Data's
`map_batches` (a callable class per actor, rows carrying their own seeds).

Imports: `serving` and everything below it, and the public API (`gpt_jax.load`).
"""
