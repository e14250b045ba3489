"""Stop strings: matched as token sequences inside the compiled loop, and again on the text afterwards (a stop
string spelled by other tokens than its own encoding is still caught). The text ends before the stop string.

`generate` trims finished rows with `cut_at_stop`; `stream` holds back text that could still grow into a stop string
(`held_back`) and ends at `first_stop`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gpt_jax.errors import InputError, check
from gpt_jax.tokenizer import BaseTokenizer, IncrementalDecoder, check_text


def stop_strings(stop) -> list[str]:
    """None, one string or a list of strings -> a list of non-empty, valid strings."""
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    check(
        isinstance(stop, (list, tuple)) and all(isinstance(x, str) and x for x in stop),
        InputError,
        "stop must be a non-empty string or a list of non-empty strings",
    )
    return [check_text(x, "stop") for x in stop]


def stop_token_ids(tokenizer: BaseTokenizer, stops: Sequence[str]) -> list[list[int]]:
    """Each stop string's own encoding (no BOS), for the in-loop match."""
    return [tokenizer.encode(x, add_special_tokens=False) for x in stops]


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
    keep, total = 0, 0
    while keep < len(pieces) and total + len(pieces[keep]) <= cut:
        total += len(pieces[keep])
        keep += 1
    return text[:cut], keep, True


def stream_text(decoder: IncrementalDecoder, tokens: Iterator[int], stops: Sequence[str]) -> Iterator[str]:
    """Generated ids -> text pieces, up to the first stop string; text that could still grow into one is held
    back until it is known not to be one."""
    text, sent = "", 0
    for token in tokens:
        text += decoder.add([token])
        cut = first_stop(text, stops)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        ready = len(text) - held_back(text, stops)
        if ready > sent:
            yield text[sent:ready]
            sent = ready
    text += decoder.flush()
    cut = first_stop(text, stops)
    end = len(text) if cut is None else cut
    if end > sent:
        yield text[sent:end]
