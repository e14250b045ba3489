"""The compiled prefill programs of short prompts prefilled together (`admission`), one per (rows, bucket T),
compiled on a background thread the first time a group of that shape could form, so that no request waits for a
compilation: each takes about a second on a 2-core CPU, and which groups form depends on the arrival order, so a
fresh server would otherwise meet a new one in burst after burst (measured: docs/BENCHMARKS.md). Until its program
is ready, a group is made smaller or its prompts are prefilled one by one.
"""

from __future__ import annotations

import queue
import threading

import numpy as np


class GroupPrograms:
    """Ahead-of-time compiled `SlotPrograms.prefill` passes of R rows and T columns, the head on the last column."""

    def __init__(self, programs, params):
        self.programs, self.params = programs, params
        self._ready: dict[tuple[int, int], object] = {}
        self._asked: set[tuple[int, int]] = set()
        self._failed: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None

    def get(self, rows: int, width: int):
        """The compiled program, or None: its compilation is then queued (once) for the background thread."""
        with self._lock:
            program = self._ready.get((rows, width))
            if program is None and (rows, width) not in self._asked:
                self._asked.add((rows, width))
                self._queue.put((rows, width))
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="gpt-jax-prefill-compile", daemon=True)
                    self._worker.start()
        return program

    @property
    def pending(self) -> int:
        """Shapes asked for whose compilation has not finished."""
        with self._lock:
            return len(self._asked) - len(self._ready) - len(self._failed)

    def compile(self, rows: int, width: int):
        """The program of `rows` x `width`, compiled now if it is not yet (blocking)."""
        with self._lock:
            if (rows, width) in self._ready:
                return self._ready[(rows, width)]
        tokens = np.zeros((rows, width), np.int32)
        cache = self.programs.new_cache(rows, width).replace(index=np.int32(0))
        lowered = self.programs.prefill.lower(
            self.params, tokens, np.zeros(rows, np.int32), cache, tokens, np.int32(width - 1), last_only=True
        )
        program = lowered.compile()
        with self._lock:
            self._asked.add((rows, width))
            self._ready[(rows, width)] = program
        return program

    def _work(self) -> None:
        while True:
            rows, width = self._queue.get()
            try:
                self.compile(rows, width)
            except Exception:  # noqa: BLE001 - that shape is never grouped; its prompts go one by one
                with self._lock:
                    self._failed.add((rows, width))
