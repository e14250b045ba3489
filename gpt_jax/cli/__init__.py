"""The `gpt-jax` command line. Each command imports what it needs when it runs.

Imports: anything.
"""
