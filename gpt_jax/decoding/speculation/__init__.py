"""Speculative decoding that never changes the output: verification (`verify.py`) and one file per proposer."""
