"""The way into the slots: the queue of requests, the prompt being prefilled chunk by chunk, short prompts
prefilled together, and the prefilled prompts that wait for free slots, first come first in.

Short prompts that wait together are prefilled in one pass where that keeps each one's bits
(`prefill.Prefiller.short`, `prefill.batches_exactly`): the queue's head and the prompts of its bucket T queued
after it, in queue order, at most `together` of them, bucket(G) * T <= max_len (the pass's cache fits a slot's
length) and no more rows than free slots; while slots decode, a pass stays within the turn's budget of tokens
(G * T), as one prompt's chunks do. The prompts it passes over keep their places. A group waits for no
compilation: where the program of its rows is not ready yet (`group_programs`), it is made smaller, down to one by
one.
"""

from __future__ import annotations

import collections

from gpt_jax.decoding.batching import bucket
from gpt_jax.serving.prefill import Prefiller
from gpt_jax.serving.requests import Prefill, Request


class Admission:
    """The requests not yet in slots. `queue` is shared with the callers' threads under `lock`; the rest belongs
    to the engine thread."""

    def __init__(self, prefiller: Prefiller, lock, max_len: int, together: int):
        self.prefiller, self.lock, self.max_len, self.together = prefiller, lock, max_len, together
        self.queue: collections.deque[Request] = collections.deque()
        self.prefilling: Prefill | None = None  # a prompt prefilled chunk by chunk
        self.ready: collections.deque[Prefill] = collections.deque()  # prefilled, waiting for free slots

    def warm(self, widths) -> None:
        """Compile now (blocking) the program of every group of prompts of these buckets that can form: what a
        server that has run a while holds (for benchmarks)."""
        rows = 2
        while self.prefiller.exact_together and rows <= bucket(self.together):
            for width in widths:
                if rows * width <= self.max_len:
                    self.prefiller.groups.compile(rows, width)
            rows *= 2

    @property
    def waiting(self) -> int:
        return len(self.queue) + (self.prefilling is not None) + len(self.ready)

    def prefill(self, budget: int, busy: bool, room: int, fail) -> int | None:
        """One piece of prefill work: a group of short prompts, or the next chunk of one prompt (a finished one
        moves to `ready`), within `budget` tokens while slots decode (`busy`). `room`: free slots; `fail(request,
        error)` ends a request whose prefill failed. Returns the tokens it took, None when nothing is to be done
        now."""
        group: list[Request] = []
        with self.lock:
            if self.prefilling is None and self.queue and (budget > 0 or not busy):
                group = self._short_group(budget, busy, room)
                if not group:
                    self.prefilling = Prefill(self.queue.popleft())
            job = self.prefilling
        if group:
            return self._together(group)
        if job is None:
            return None
        if job.request.finished:
            self.prefilling = None
        elif job.logits is None:
            if budget <= 0 and busy:
                return None
            try:
                return self.prefiller.step(job)
            except Exception as error:  # noqa: BLE001 - reported to the request, the engine goes on
                fail(job.request, error)
        else:
            self.ready.append(job)
            self.prefilling = None
        return 0

    def _short_group(self, budget: int, busy: bool, room: int) -> list[Request]:
        """(Under the lock.) The group of short prompts the next pass takes (see the module's text), taken off the
        queue; none where fewer than two qualify."""
        head = self.queue[0]
        if self.together < 2 or not self.prefiller.short(head):
            return []
        width = head.prep.inputs.tokens.shape[1]
        fit = 1 << ((self.max_len // width).bit_length() - 1)  # bucket(G) * T <= max_len
        most = min(self.together, fit, budget // width if busy else fit)
        group, rows = [], 0
        for request in self.queue:
            if len(group) == most:
                break
            alike = request is head or (self.prefiller.short(request) and request.prep.inputs.tokens.shape[1] == width)
            if alike and rows + request.rows <= room:
                group.append(request)
                rows += request.rows
            elif request is head:
                return []
        group = group[: self.prefiller.fits_together(len(group), width)]
        if len(group) < 2:
            return []
        for request in group:
            self.queue.remove(request)
        return group

    def _together(self, group: list[Request]) -> int:
        """Prefill `group` in one pass; its jobs wait in `ready`. Should the pass fail, each request goes back to
        the queue's head to be prefilled alone, where a failure ends its own request only."""
        jobs = [Prefill(request) for request in group]
        try:
            columns = self.prefiller.together(jobs)
        except Exception:  # noqa: BLE001 - retried one by one
            with self.lock:
                for request in reversed(group):
                    request.prefill_alone = True
                    self.queue.appendleft(request)
            return 0
        self.ready.extend(jobs)
        return columns
