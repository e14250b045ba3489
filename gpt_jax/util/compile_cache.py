"""A persistent cache of compiled programs: a new process skips XLA compilation for a program it has compiled before.

The command line turns it on for `generate`, `score` and `train` (not for `bench`, which measures compilation):
the directory is $GPT_JAX_COMPILE_CACHE, else $XDG_CACHE_HOME/gpt_jax/xla or ~/.cache/gpt_jax/xla; setting the
variable to "off" disables it. Library users call `enable_compile_cache()` once, before the first generate.
Entries are keyed by JAX on the program, the backend and the compiler version, so a stale entry is never used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

ENV = "GPT_JAX_COMPILE_CACHE"
OFF = ("off", "0", "false", "no")


def cache_home() -> Path:
    """Where gpt_jax keeps what it builds for this machine: $XDG_CACHE_HOME/gpt_jax, else ~/.cache/gpt_jax."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt_jax"


def default_directory() -> Path:
    return cache_home() / "xla"


def enable_compile_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Store compiled programs under `directory` (default: see above) and reuse them in later processes.

    Returns the directory, or None when $GPT_JAX_COMPILE_CACHE says "off" or the directory cannot be created
    (then a warning is printed and everything works as before, compiling in each process).
    """
    if directory is None:
        value = os.environ.get(ENV, "")
        if value.strip().lower() in OFF:
            return None
        directory = value or default_directory()
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"gpt-jax: warning: compile cache disabled ({path}: {e.strerror})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # decode programs and tile probes
    return path
