"""Training a SentencePiece tokenizer for `gpt-jax train` and `gpt_jax.train_tokenizer`."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from gpt_jax.errors import InputError, check


MIN_VOCAB_SIZE = 260  # 256 byte pieces and unk, bos, eos, pad


def train_tokenizer(
    text_files: Sequence[str | os.PathLike],
    vocab_size: int,
    model_type: str = "bpe",
    output: str | os.PathLike | None = None,
    *,
    max_sentences: int = 2_000_000,
) -> bytes:
    """Train a SentencePiece model (byte fallback; unk/bos/eos/pad = 0/1/2/3) and return its bytes.

    Text is kept as written (identity normalization, spaces preserved, no dummy prefix), so decode(encode(x)) == x
    for any x, and a word is spelled the same at the start of a prompt as after a newline.
    With `output`, the model is also written there.
    """
    check(model_type in ("bpe", "unigram"), InputError, f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    check(
        isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and vocab_size >= MIN_VOCAB_SIZE,
        InputError,
        f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} (256 byte pieces plus specials), got {vocab_size!r}",
    )
    files = [str(f) for f in text_files]
    check(bool(files), InputError, "text_files must name at least one file")
    for f in files:
        check(Path(f).is_file(), InputError, f"text file not found: {f}")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(files),
                model_prefix=prefix,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                character_coverage=0.9995,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
                max_sentence_length=16384,
                add_dummy_prefix=False,
            )
        except RuntimeError as e:
            needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
            if needed:
                raise InputError(
                    f"vocab_size={vocab_size} is too small for this text: its characters alone need "
                    f"{needed.group(1)} pieces; give a vocab_size of more than {needed.group(1)}"
                ) from None
            raise InputError(
                f"SentencePiece training failed (vocab_size={vocab_size}): {str(e).splitlines()[-1]}"
            ) from None
        data = Path(prefix + ".model").read_bytes()
    if output is not None:
        Path(output).write_bytes(data)
    return data
