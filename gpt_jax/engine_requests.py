"""What passes between the serving engine and its callers: requests in, events out, metric hooks, and the two
refusals a caller can meet (a full queue, an engine that is closing)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from gpt_jax.errors import GptJaxError
from gpt_jax.settings import Prepared


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

    def __init__(self, prep: Prepared, on_event: Callable[[Event], None], prompt_logprobs: int = -1):
        """prompt_logprobs = k >= 0: also score the prompt's tokens, with k alternatives each."""
        self.prep, self.on_event, self.prompt_top = prep, on_event, prompt_logprobs
        self.rows = prep.rows
        self.prompt_len = int(prep.inputs.tokens.shape[1] - prep.inputs.pad_len[0])
        self.arrival = time.perf_counter()
        self.first_token: float | None = None
        self.generated = [0] * self.rows
        self.open_rows = set(range(self.rows))
        self.cancelled_rows: set[int] = set()

    @property
    def finished(self) -> bool:
        return not self.open_rows


class Observer:
    """Hooks for metrics (all no-ops here): called on the engine thread."""

    def on_dispatch(self, busy: int, queued: int) -> None: ...

    def on_prefill(self, tokens: int) -> None: ...

    def on_insert(self, joined_running: bool) -> None: ...

    def on_release(self) -> None: ...

    def on_first_token(self, seconds: float) -> None: ...

    def on_row_finished(self, tokens: int, seconds_after_first: float) -> None: ...
