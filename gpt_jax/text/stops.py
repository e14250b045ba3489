"""Stop strings: matched as token sequences inside the compiled loop, and again on the text afterwards (a stop
string spelled by other tokens than its own encoding is still caught). The text ends before the stop string.

`generate` trims finished rows with `cut_at_stop`; `stream` holds back text that could still grow into a stop string
(`held_back`) and ends at `first_stop`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gpt_jax.errors import InputError, check
from gpt_jax.text.detokenize import IncrementalDecoder
from gpt_jax.text.tokenizer import BaseTokenizer, check_text


MAX_STOP_STRINGS = 16  # evaluation harnesses send up to 6 (their task's stops and the model's EOS string)


def stop_strings(stop) -> list[str]:
    """None, one string or a list of up to 16 strings -> a list of non-empty, valid strings."""
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    check(
        isinstance(stop, (list, tuple)) and all(isinstance(x, str) and x for x in stop),
        InputError,
        "stop must be a non-empty string or a list of non-empty strings",
    )
    check(len(stop) <= MAX_STOP_STRINGS, InputError, f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    return [check_text(x, "stop") for x in stop]


def stop_token_ids(tokenizer: BaseTokenizer, stops: Sequence[str], room: int, longest: int) -> list[list[int]]:
    """The stop strings' own encodings (no BOS) that the in-loop matcher holds: at most `room` sequences of at most
    `longest` tokens. Every stop string, these and the rest, is matched on the text as well."""
    encodings = [tokenizer.encode(x, add_special_tokens=False) for x in stops]
    return [ids for ids in encodings if 0 < len(ids) <= longest][: max(room, 0)]


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(x) for x in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    longest = 0
    for x in stops:
        for n in range(min(len(x) - 1, len(text)), longest, -1):
            if text.endswith(x[:n]):
                longest = n
                break
    return longest


def cut_at_stop(pieces: Sequence[str], stops: Sequence[str]) -> tuple[str, int, bool]:
    """A row's text pieces (one per generated token) -> (text before the first stop string, how many tokens lie
    wholly before it, whether a stop string was found)."""
    text = "".join(pieces)
    cut = first_stop(text, stops)
    if cut is None:
        return text, len(pieces), False
    return text[:cut], tokens_before(pieces, cut), True


def tokens_before(pieces: Sequence[str], cut: int) -> int:
    """How many of the pieces (one per token) lie wholly before character `cut`."""
    keep, total = 0, 0
    while keep < len(pieces) and total + len(pieces[keep]) <= cut:
        total += len(pieces[keep])
        keep += 1
    return keep


class StopText:
    """Generated ids pushed in as they come -> text up to the first stop string. `add` returns the text now safe
    to send (held back while it could still grow into a stop string), `end` the rest; `pieces` is each id's text."""

    def __init__(self, decoder: IncrementalDecoder, stops: Sequence[str]):
        self.decoder, self.stops = decoder, stops
        self.text, self.sent, self.cut = "", 0, None
        self.pieces: list[str] = []

    def add(self, ids: Sequence[int]) -> str:
        if self.cut is not None:
            return ""
        for token in ids:
            piece = self.decoder.add([token])
            self.pieces.append(piece)
            self.text += piece
        self.cut = first_stop(self.text, self.stops)
        ready = self.cut if self.cut is not None else len(self.text) - held_back(self.text, self.stops)
        return self._send(ready)

    def end(self) -> str:
        """No more ids: the held-back text (and bytes of an unfinished character), up to a stop string."""
        if self.cut is None:
            tail = self.decoder.flush()
            self.text += tail
            if self.pieces:
                self.pieces[-1] += tail
            self.cut = first_stop(self.text, self.stops)
        return self._send(len(self.text) if self.cut is None else self.cut)

    @property
    def stopped(self) -> bool:
        """A stop string was found: nothing more is needed."""
        return self.cut is not None

    def kept(self) -> int:
        """How many ids lie wholly before the stop string (all when there is none), as `cut_at_stop` counts."""
        return len(self.pieces) if self.cut is None else tokens_before(self.pieces, self.cut)

    def final_text(self) -> str:
        return self.text if self.cut is None else self.text[: self.cut]

    def _send(self, upto: int) -> str:
        out = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return out


def stream_text(decoder: IncrementalDecoder, tokens: Iterator[int], stops: Sequence[str]) -> Iterator[str]:
    """Generated ids -> text pieces, up to the first stop string; text that could still grow into one is held
    back until it is known not to be one."""
    row = StopText(decoder, stops)
    for token in tokens:
        piece = row.add([token])
        if piece:
            yield piece
        if row.stopped:
            return
    tail = row.end()
    if tail:
        yield tail
