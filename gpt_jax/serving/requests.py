"""What passes between the serving engine and its callers: requests in, events out (made from the decode's host
outputs here), what a request's events add up to, metric hooks, and the two refusals a caller can meet (a full
queue, an engine that is closing)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpt_jax.decoding.prepare import Prepared
from gpt_jax.errors import GptJaxError


@dataclasses.dataclass
class Prefill:
    """A request's prompt on its way into the slots: its layout (`prefill.plan`) and prefix-cache keys, its
    prefill cache, the next chunk to prefill, the prompt scores gathered so far, and, once the last chunk ran, the
    logits its first token is chosen from."""

    request: Request
    layout: Any = None
    keys: list = dataclasses.field(default_factory=list)
    cache: Any = None  # a KVCache, made at the first chunk and grown with the chunks
    next: int = 0
    scores: list = dataclasses.field(default_factory=list)
    logits: Any = None  # [V]


class QueueFull(GptJaxError):
    """The waiting queue is full: try again later (HTTP 429)."""


class EngineClosed(GptJaxError):
    """The engine takes no new requests (shutting down)."""


@dataclasses.dataclass
class Event:
    """What a request hears: kind "tokens" (row, tokens, logprobs, top), "finish" (row, finish), "error", or
    "prompt" (logprobs and top of prompt tokens 2..L, when the request asked for them), which comes first."""

    kind: str
    row: int = 0
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top: list[list[tuple[int, float]]] | None = None
    finish: str | None = None
    error: Exception | None = None


class Request:
    """One prompt and its n samples on their way through the engine."""

    def __init__(
        self, prep: Prepared, on_event: Callable[[Event], None], prompt_logprobs: int = -1, score_only: bool = False
    ):
        """prompt_logprobs = k >= 0: also score the prompt's tokens, with k alternatives each. score_only: only
        that (prepared with `Engine.prepare(..., scoring=True)`): after the prefill every row finishes ("length")
        without a slot or a generated token."""
        if score_only and prompt_logprobs < 0:
            raise ValueError("score_only needs prompt_logprobs >= 0")
        self.prep, self.on_event, self.prompt_top = prep, on_event, prompt_logprobs
        self.score_only = score_only
        self.rows = prep.rows
        self.prompt_len = int(prep.inputs.tokens.shape[1] - prep.inputs.pad_len[0])
        self.arrival = time.perf_counter()
        self.first_token: float | None = None
        self.cached_tokens = 0  # prompt tokens whose keys and values came from the prefix cache
        self.prefill_alone = False  # set when a prefill together with others failed: it is retried alone
        self.generated = [0] * self.rows
        self.open_rows = set(range(self.rows))
        self.cancelled_rows: set[int] = set()

    @property
    def finished(self) -> bool:
        return not self.open_rows

    def finish_unslotted(self, lock) -> None:
        """Every row finishes ("length") without a slot: a request that only scored its prompt."""
        for row in range(self.rows):
            with lock:
                self.open_rows.discard(row)
            self.on_event(Event("finish", row, finish="length"))


class Outcome:
    """What one request's events add up to, row by row: tokens, logprobs, top alternatives and finish reason (or
    the error that ended it). `on_event` is a `Request`'s listener (called on the engine thread); `wait` blocks
    until every row finished or the request failed."""

    def __init__(self, rows: int):
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]
        self.top: list[list] = [[] for _ in range(rows)]
        self.finish: list[str | None] = [None] * rows
        self.prompt: Event | None = None  # the prompt's scores, when the request asked for them
        self.error: Exception | None = None
        self._ended = threading.Event()

    def on_event(self, event: Event) -> None:
        if event.kind == "tokens":
            self.tokens[event.row] += event.tokens
            self.logprobs[event.row] += event.logprobs
            self.top[event.row] += event.top or []
            return
        if event.kind == "prompt":
            self.prompt = event
            return
        if event.kind == "finish":
            self.finish[event.row] = event.finish
        else:
            self.error = event.error
        if self.error is not None or all(f is not None for f in self.finish):
            self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the request ended (every row finished, or it failed); False on timeout."""
        return self._ended.wait(timeout)


class Observer:
    """Hooks for metrics (all no-ops here): called on the engine thread."""

    def on_dispatch(self, busy: int, queued: int) -> None: ...

    def on_prefill(self, tokens: int, prompts: int = 1) -> None: ...

    def on_prefix_lookup(self, prompt_tokens: int, cached_tokens: int) -> None: ...

    def on_insert(self, joined_running: bool) -> None: ...

    def on_release(self) -> None: ...

    def on_first_token(self, seconds: float) -> None: ...

    def on_row_finished(self, tokens: int, seconds_after_first: float) -> None: ...


def slot_updates(out: dict, owners: list):
    """(slot, request, row, its "tokens" event, finish code after them) for each slot that took tokens in a
    dispatch's host outputs (see `slots.decode`); cancelled rows are skipped."""
    for b, owner in enumerate(owners):
        if owner is None or owner[1] in owner[0].cancelled_rows:
            continue
        request, row = owner
        live = out["live"][:, b]
        if not live.any():
            continue
        top = None
        if request.prep.top_logprobs:
            k = request.prep.top_logprobs
            ids, values = out["top_ids"][live, b, :k], out["top_logprobs"][live, b, :k]
            top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(ids, values)]
        event = Event("tokens", row, out["tokens"][live, b].tolist(), out["logprobs"][live, b].tolist(), top)
        yield b, request, row, event, int(out["finish"][live, b][-1])


def prompt_event(scores: list[dict], k: int) -> Event:
    """The "prompt" event from the prefill chunks' scores (log-probabilities of prompt tokens 2..L)."""
    logprobs = np.concatenate([s["logprobs"] for s in scores]).tolist()
    top = None
    if k:
        ids = np.concatenate([s["top_ids"] for s in scores])
        values = np.concatenate([s["top_logprobs"] for s in scores])
        top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(ids, values)]
    return Event("prompt", logprobs=logprobs, top=top)
