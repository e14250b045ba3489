"""The text the benchmarks draw prompts from and train a draft model on: `--corpus FILE`, or the sample of the
bundled model's training corpus that ships with the package (gpt_jax/assets/corpus/README.md)."""

from __future__ import annotations

from pathlib import Path

from gpt_jax.errors import InputError, check

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "corpus" / "shakespeare_sample.txt"


def corpus_file(path: str | None) -> Path:
    """The corpus to read: `path` (a UTF-8 text file) or, with None, the bundled sample."""
    chosen = SAMPLE if path is None else Path(path)
    check(chosen.is_file(), InputError, f"--corpus: {chosen} is not a file")
    return chosen


def add_corpus_flag(parser) -> None:
    parser.add_argument(
        "--corpus", default=None, help="UTF-8 text to take prompts (and the draft's training text) from "
        "(default: a 200 kB sample of the bundled model's training corpus, shipped with the package)"
    )
