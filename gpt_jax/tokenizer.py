"""Steps 1 and 9 of the pipeline: text -> SentencePiece ids, and ids -> text (whole or incremental).

Decoding maps every id to its bytes (byte-fallback pieces such as `<0xE5>` are one raw byte) and runs them through an
incremental UTF-8 decoder, so a streamed character is emitted only once all of its bytes have arrived. `decode` is
the same decoder run to the end, so streamed pieces always concatenate to the decoded text.
"""

from __future__ import annotations

import codecs
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from gpt_jax.errors import InputError, TokenizerError, check

_UNK_TEXT = " \u2047 ".encode()  # how SentencePiece renders an unknown piece


class Tokenizer:
    """A SentencePiece model plus the special ids the pipeline needs.

    `pad_id` is the model's pad piece when it has one, else its EOS id (finished rows emit pad, and a decode stops at
    EOS either way).
    """

    def __init__(self, model: str | os.PathLike | bytes, *, add_bos: bool = True, add_eos: bool = False):
        try:
            if isinstance(model, bytes):
                self._sp = spm.SentencePieceProcessor(model_proto=model)
                self.model_bytes = model
            else:
                path = Path(model)
                check(path.is_file(), TokenizerError, f"tokenizer model file not found: {path}")
                self.model_bytes = path.read_bytes()
                self._sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(
                f"could not read SentencePiece model {model if not isinstance(model, bytes) else '<bytes>'}: {e}"
            ) from None
        sp = self._sp
        self.vocab_size = sp.vocab_size()
        self.bos_id, self.eos_id, self.unk_id = sp.bos_id(), sp.eos_id(), sp.unk_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
        self.add_bos, self.add_eos = add_bos and self.bos_id >= 0, add_eos and self.eos_id >= 0
        self._bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]
        self._normal = [not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i)) for i in range(self.vocab_size)]
        spaced = next((i for i in range(self.vocab_size) if self._normal[i] and self._bytes[i][:1] == b" "), None)
        # Models trained with a dummy prefix drop the space that starts a text; ask SentencePiece which this is.
        self._strip_first_space = spaced is not None and len(sp.decode([spaced])) < len(self._bytes[spaced].decode())

    def _piece_bytes(self, i: int) -> bytes:
        sp = self._sp
        if sp.is_control(i):
            return b""
        if sp.is_unknown(i):
            return _UNK_TEXT
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()

    # step 1: tokenize
    def encode(self, text: str | Sequence[str]) -> list[int] | list[list[int]]:
        """One string -> ids; a list of strings -> a list of id lists. BOS/EOS added as configured."""
        if isinstance(text, str):
            return self._encode_one(text)
        check(
            isinstance(text, (list, tuple)),
            InputError,
            f"text must be a string or a list of strings, got {type(text).__name__}",
        )
        return [self._encode_one(t) for t in text]

    def _encode_one(self, text: str) -> list[int]:
        check(isinstance(text, str), InputError, f"text must be a string, got {type(text).__name__}")
        ids = self._sp.encode(text)
        return ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])

    # step 9: detokenize
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text: stops at the first EOS, drops pad and control pieces."""
        decoder = IncrementalDecoder(self)
        return decoder.add(ids) + decoder.flush()

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def files(self) -> dict[str, bytes]:
        """What a model directory stores for this tokenizer."""
        return {"tokenizer.model": self.model_bytes}

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
            f"pad={self.pad_id}, unk={self.unk_id})"
        )


class IncrementalDecoder:
    """Turns ids into text as they arrive, never emitting part of a UTF-8 character.

    `prefix_ids` (e.g. the prompt) are decoded but not returned, so the first generated word keeps its leading space.
    After an EOS id, further ids are ignored.
    """

    def __init__(self, tokenizer: Tokenizer, prefix_ids: Iterable[int] = ()):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True
        self.finished = False
        self.add(prefix_ids)

    def add(self, ids: Iterable[int]) -> str:
        tok, out = self._tok, []
        for i in ids:
            i = int(i)
            if self.finished or i == tok.eos_id:
                self.finished = True
                break
            if i == tok.pad_id or not 0 <= i < tok.vocab_size:
                continue
            piece = tok._bytes[i]
            if self._at_start and piece:
                if tok._strip_first_space and tok._normal[i] and piece.startswith(b" "):
                    piece = piece[1:]  # SentencePiece drops the dummy-prefix space at the start of a text
                self._at_start = False
            out.append(self._utf8.decode(piece))
        return "".join(out)

    def flush(self) -> str:
        """Whatever bytes are still held, replaced by U+FFFD if they never completed a character."""
        return self._utf8.decode(b"", final=True)


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
        isinstance(vocab_size, int) and vocab_size >= 260,
        InputError,
        f"vocab_size must be an integer >= 260 (256 byte pieces plus specials), got {vocab_size!r}",
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
            raise InputError(
                f"SentencePiece training failed (vocab_size={vocab_size}): {str(e).splitlines()[-1]}"
            ) from None
        data = Path(prefix + ".model").read_bytes()
    if output is not None:
        Path(output).write_bytes(data)
    return data
