"""argparse with the command line's error convention: one line `gpt-jax: error: ...` and status 2, never the
usage text; every subcommand (the benchmark's own parser included) uses it."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"gpt-jax: error: {message} (see {self.prog} --help)\n")
