"""The compiled prefill programs of short prompts prefilled together (`admission`), one per (rows, bucket T),
compiled on a background thread the first time a group of that shape could form, so that no request waits for a
compilation: each takes about a second on a 2-core CPU, and which groups form depends on the arrival order, so a
fresh server would otherwise meet a new one in burst after burst (measured: docs/BENCHMARKS.md). Until its program
is ready, a group is made smaller or its prompts are prefilled one by one.
"""

from __future__ import annotations

import atexit
import queue
import threading
from functools import partial

import jax
import numpy as np

from gpt_jax.model.kv_cache import KVCache


def pass_by_rows(prefill, params, tokens, cache: KVCache, pad_len):
    """One `SlotPrograms.prefill` pass of prompts [R, T] (the head on the last column) into `cache`; returns their
    logits [R, V] and one cache per prompt, as a prompt prefilled alone has (so inserting it into a slot or keeping
    its block runs the programs a lone prompt does)."""
    logits, cache, _ = prefill(params, tokens, pad_len, cache, tokens, tokens.shape[1] - 1, last_only=True)
    heads = cache.k[0].shape[0] // tokens.shape[0]
    row = lambda r, xs: tuple(x[r * heads : (r + 1) * heads] for x in xs)
    return logits, [cache.replace(k=row(r, cache.k), v=row(r, cache.v)) for r in range(tokens.shape[0])]


IDLE_SECONDS = 5.0  # a background thread with nothing to compile for this long ends
_WORKERS: set = set()  # the GroupPrograms whose thread runs


@atexit.register
def _stop_all() -> None:
    for programs in list(_WORKERS):
        programs.stop()


class GroupPrograms:
    """Ahead-of-time compiled passes of R prompts of T columns (`pass_by_rows`)."""

    def __init__(self, programs, params):
        self.programs, self.params = programs, params
        self._ready: dict[tuple[int, int], object] = {}
        self._asked: set[tuple[int, int]] = set()
        self._failed: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stopping = False

    def get(self, rows: int, width: int):
        """The compiled program, or None: its compilation is then queued (once) for the background thread."""
        with self._lock:
            program = self._ready.get((rows, width))
            if program is None and (rows, width) not in self._asked and not self._stopping:
                self._asked.add((rows, width))
                self._queue.put((rows, width))
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="gpt-jax-prefill-compile", daemon=True)
                    _WORKERS.add(self)
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
        prefill = jax.jit(partial(pass_by_rows, self.programs.prefill))  # outputs are rows: nothing to donate into
        program = prefill.lower(self.params, tokens, cache, np.zeros(rows, np.int32)).compile()
        with self._lock:
            self._asked.add((rows, width))
            self._ready[(rows, width)] = program
        return program

    def stop(self) -> None:
        """Let the compilation under way finish and stop the background thread (before the interpreter exits: a
        thread killed inside XLA's compiler aborts the process)."""
        with self._lock:
            worker, self._stopping = self._worker, True
        if worker is not None:
            self._queue.put(None)
            worker.join()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                item = None
            with self._lock:
                if item is None or self._stopping:  # idle or stopping: the thread ends (`get` starts another)
                    if item is None and not self._stopping and not self._queue.empty():
                        continue
                    self._worker = None
                    _WORKERS.discard(self)
                    return
            rows, width = item
            try:
                self.compile(rows, width)
            except Exception:  # noqa: BLE001 - that shape is never grouped; its prompts go one by one
                with self._lock:
                    self._failed.add((rows, width))
