"""Step 9, incremental: ids -> text as they arrive, never splitting a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from typing import Protocol


class ByteVocabulary(Protocol):
    """What the decoder needs of a tokenizer (every `text.tokenizer.BaseTokenizer` has it)."""

    eos_id: int
    pad_id: int
    vocab_size: int

    def token_bytes(self, i: int) -> bytes: ...

    def drops_leading_space(self, i: int) -> bool: ...


class IncrementalDecoder:
    """Turns ids into text as they arrive, never emitting part of a UTF-8 character.

    `prefix_ids` (e.g. the prompt) are decoded but not returned, so the first generated word keeps its leading space.
    The prefix is context: an EOS id inside it (a chat template's end of turn) ends nothing. After an EOS id among
    the added ids, further ids are ignored.
    """

    def __init__(self, tokenizer: ByteVocabulary, prefix_ids: Iterable[int] = ()):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True
        self.finished = False
        self._decode(prefix_ids, ends=False)

    def add(self, ids: Iterable[int]) -> str:
        """The text the new `ids` complete; empty from the first EOS id on."""
        return self._decode(ids, ends=True)

    def _decode(self, ids: Iterable[int], ends: bool) -> str:
        tok, out = self._tok, []
        for i in ids:
            i = int(i)
            if self.finished:
                break
            if i == tok.eos_id:
                self.finished = ends
                continue
            if i == tok.pad_id or not 0 <= i < tok.vocab_size:
                continue
            piece = tok.token_bytes(i)
            if self._at_start and piece:
                if tok.drops_leading_space(i):
                    piece = piece[1:]  # SentencePiece drops the dummy-prefix space at the start of a text
                self._at_start = False
            out.append(self._utf8.decode(piece))
        return "".join(out)

    def flush(self) -> str:
        """Whatever bytes are still held, replaced by U+FFFD if they never completed a character."""
        return self._utf8.decode(b"", final=True)

    def decode_all(self, ids: Sequence[int]) -> list[str]:
        """The text of each id in turn; the bytes still held at the end are added to the last piece."""
        pieces = [self.add([t]) for t in ids]
        tail = self.flush()
        if pieces:
            pieces[-1] += tail
        elif tail:
            pieces = [tail]
        return pieces
