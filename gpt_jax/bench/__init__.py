"""Benchmarks the command line exposes: `gpt-jax bench` (against transformers), `bench --speculative`,
`gpt-jax bench-serve`.

Imports: anything below the command line.
"""
