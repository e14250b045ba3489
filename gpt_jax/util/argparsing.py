"""argparse with the command line's error convention: one line `gpt-jax: error: ...` and status 2, never the
usage text; every subcommand (the benchmark's own parser included) uses it."""

from __future__ import annotations

import argparse


def one_line(message: str) -> str:
    """A message on one line: line breaks in it (a value the user gave may hold them) are written as \\n."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"gpt-jax: error: {one_line(message)} (see {self.prog} --help)\n")


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _integer_at_least(text, 0)


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value
