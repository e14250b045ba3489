"""Continuous batching on the host: requests come and go between decode dispatches while the slots keep decoding.

One thread owns the device. Each turn it (1) prefills queued prompts, at most `chunk` prompt tokens while slots are
decoding (a long prompt is split over several turns, so the running rows wait one chunk at most; blocks of a
prompt that the prefix cache holds are copied, not computed: `prefill`, `prefix_cache`; short prompts that wait
together go through one pass where that keeps their bits: `admission`), and moves each finished prefill into free
slots, first come first; (2) dispatches `steps_per_dispatch` decode steps for all slots; (3) while those
run, reads the previous dispatch's tokens and hands them to their requests. A slot whose sequence ends is free
from the next turn on; a cancelled one is released at the next dispatch.

A request is one prompt with n samples, validated by `prepare.prepare` exactly as `generate` validates it; sample
r uses row seed `row_seeds[r]`, so a seeded request gives the tokens `generate` gives it, whatever else is running.
Events reach the request's `on_event` callback on the engine thread.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

import jax
import numpy as np

from gpt_jax.decoding.rows import FINISH_NAMES, RUNNING
from gpt_jax.decoding.prepare import Prepared, eos_table, prepare
from gpt_jax.decoding.generator import automata_of
from gpt_jax.decoding.settings import GenerationSettings
from gpt_jax.errors import InputError, check
from gpt_jax.serving import slots
from gpt_jax.serving.constraint_pool import DEFAULT_STATES, SlotConstraints, empty_table
from gpt_jax.serving.admission import Admission
from gpt_jax.serving.options import PREFILL_TOGETHER, check_options, check_room
from gpt_jax.serving.prefill import Prefiller
from gpt_jax.serving.prefix_cache import DEFAULT_BUDGET_GB
from gpt_jax.serving.requests import (
    EngineClosed,
    Event,
    Observer,
    Prefill,
    QueueFull,
    Request,
    slot_updates,
)

ALTERNATIVES = 20  # a dispatch records 0 or this many alternatives per token (two compiled decode programs)


class Engine:
    """The slots of one `Generator` and the thread that schedules them. Use `submit`, `cancel`, `close`."""

    def __init__(
        self,
        gen,
        slots_count: int = 8,
        max_queue: int = 64,
        chunk: int | None = None,
        steps_per_dispatch: int = 4,
        max_len: int | None = None,
        observer: Observer | None = None,
        prefix_cache_gb: float = DEFAULT_BUDGET_GB,
        constraint_states: int = DEFAULT_STATES,
        prefill_together: int = PREFILL_TOGETHER,
    ):
        """chunk: prompt tokens per prefill pass, and the prefix cache's block (default: `default_chunk`);
        prefix_cache_gb: the most the prefix cache's blocks hold (0: no prefix cache; `prefix_cache`);
        constraint_states: room for the automata of constrained requests (0: none taken; `constraint_pool`);
        prefill_together: the most short prompts prefilled in one pass where that keeps their bits
        (`prefill.batches_exactly`; 1: one by one)."""
        self.data_rows = gen.mesh.shape["data"] if gen.mesh is not None else 1
        self.max_len, chunk, budget = check_options(
            gen, self.data_rows, slots_count, max_queue, chunk, steps_per_dispatch, max_len, prefix_cache_gb,
            constraint_states, prefill_together,
        )
        self.gen, self.slots, self.max_queue, self.chunk = gen, slots_count, max_queue, chunk
        self.steps_per_dispatch, self.observer = steps_per_dispatch, observer or Observer()
        self.constraints = SlotConstraints(gen.config.vocab_size, constraint_states)  # checks the number
        table = empty_table(gen.config.vocab_size, constraint_states) if constraint_states else None
        self.programs = slot_programs(gen, slots_count, self.max_len, table)
        self.prefiller = Prefiller(gen, self.programs, chunk, self.data_rows, budget, self.observer)
        self._state = self.programs.empty()
        self._owners: list[tuple[Request, int] | None] = [None] * slots_count
        self._reach = np.zeros(slots_count, np.int64)  # an upper bound of each slot's cache index
        self._releases: set[int] = set()
        self._lock = threading.Condition()
        self.admission = Admission(self.prefiller, self._lock, self.max_len, prefill_together)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="gpt-jax-engine", daemon=True)
        self._thread.start()

    # ---- the caller's side (any thread) ------------------------------------------------------------------------
    def prepare(self, prompt: Sequence[int], settings: GenerationSettings, scoring: bool = False) -> Prepared:
        """Check one prompt and its settings as `generate` does, and against this engine's slots and context.
        `scoring`: the request only scores its prompt (`Request(..., score_only=True)`), which may fill the
        context."""
        check(settings.speculative is None, InputError, "speculative decoding is not available in the server")
        check(not settings.ignore_eos, InputError, "ignore_eos is not available in the server")
        automata = self.constraints.check(automata_of(self.gen.config, self.gen.tokenizer, [prompt], settings))
        prep = prepare(self.gen.config, [prompt], settings, self.data_rows, scoring=scoring)
        prep = dataclasses.replace(prep, automata=automata)  # placed by the pool when it joins, never stacked
        check(
            prep.rows <= self.slots, InputError, f"n must be at most the server's {self.slots} slots, got {prep.rows}"
        )
        budget = int(prep.inputs.rules.max_new_tokens[0])
        check_room(int(prep.inputs.tokens.shape[1] - prep.inputs.pad_len[0]), budget, self.max_len, scoring)
        return prep

    def submit(self, request: Request) -> None:
        """Queue a request; QueueFull when `max_queue` requests already wait, EngineClosed after `close`."""
        with self._lock:
            if self._closing:
                raise EngineClosed("the server is shutting down and takes no new requests")
            queue = self.admission.queue
            if len(queue) >= self.max_queue:
                raise QueueFull(f"{len(queue)} requests are waiting, the most this server queues")
            queue.append(request)
            self._lock.notify()

    def cancel(self, request: Request, row: int | None = None) -> None:
        """Stop one row of a request (or all): its slot is released at the next dispatch, nothing more is sent."""
        with self._lock:
            rows = range(request.rows) if row is None else [row]
            request.cancelled_rows.update(rows)
            request.open_rows.difference_update(rows)
            if request.finished and request in self.admission.queue:
                self.admission.queue.remove(request)
            for b, owner in enumerate(self._owners):
                if owner is not None and owner[0] is request and owner[1] in request.cancelled_rows:
                    self._owners[b] = None
                    self._releases.add(b)
                    self.constraints.left(b)
            self._lock.notify()

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the ones already taken, then stop the thread."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self.admission.queue)

    @property
    def busy(self) -> int:
        return sum(owner is not None for owner in self._owners)

    @property
    def prefix_cache(self):
        """The prefix cache (`prefix_cache.PrefixCache`): its blocks, budget and counts."""
        return self.prefiller.cache

    @property
    def state(self) -> slots.SlotState:
        """The slots' device state as of the last dispatch (for inspection)."""
        return self._state

    @property
    def compiled_decode_programs(self) -> int:
        """How many decode programs were compiled (one per alternatives setting and attended bucket used)."""
        return self.programs.decode_traces

    # ---- the engine thread -------------------------------------------------------------------------------------
    def _idle(self) -> bool:
        return not self.admission.waiting and self.busy == 0 and not self._releases

    def _run(self) -> None:
        pending = None
        while True:
            with self._lock:
                while pending is None and self._idle() and not self._closing:
                    self._lock.wait()
                if pending is None and self._idle() and self._closing:
                    return
            self._admit()
            dispatched = self._dispatch()
            if pending is not None:
                self._deliver(*pending)
            pending = dispatched

    def _admit(self) -> None:
        """Insert prefilled prompts into free slots (first come first), then prefill (`admission`) within a
        budget of `chunk` tokens while slots decode."""
        budget = self.chunk
        while self._insert_ready():
            used = self.admission.prefill(budget, self.busy > 0, len(self._free_slots()), self._fail)
            if used is None:
                return
            budget -= used

    def _insert_ready(self) -> bool:
        """Move prefilled prompts into free slots, first come first; False while the first waits for room."""
        ready = self.admission.ready
        while ready:
            job = ready[0]
            request = job.request
            if request.score_only and not request.finished:  # its scores went out with its last chunk
                request.finish_unslotted(self._lock)
            if request.finished:
                ready.popleft()
                continue
            free = self._free_slots()
            if len(free) < request.rows:
                return False
            start, state = self.constraints.reserve(request.prep, self._state)
            if start is None:  # its automaton waits for room
                return False
            self._state = state
            self._guarded(request, self._insert_rows, job, free, start)
            ready.popleft()
        return True

    def _free_slots(self) -> list[int]:
        return [b for b, owner in enumerate(self._owners) if owner is None and b not in self._releases]

    def _guarded(self, request: Request, fn, *args) -> None:
        """Run one request's step; a failure ends that request only (`_fail`)."""
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 - reported to the request, the engine goes on
            self._fail(request, error)

    def _fail(self, request: Request, error: Exception) -> None:
        self.cancel(request)
        request.on_event(Event("error", error=error))

    def _insert_rows(self, job: Prefill, free: list[int], start: int) -> None:
        request = job.request
        inputs = request.prep.inputs
        joined_running = self.busy > 0
        for row in range(request.rows):
            b = free[row]
            self._reach[b] = inputs.tokens.shape[1] - int(inputs.pad_len[0])
            settings = slots.RowSettings.of(inputs, row).replace(constraint=np.int32(start))
            prompt, pad, shift = inputs.tokens[0], inputs.pad_len[0], np.int32(job.layout.pad)
            self._state = self.programs.insert(
                self._state, np.int32(b), prompt, pad, shift, job.cache, job.logits, settings
            )
            self.constraints.joined(b, start)
            with self._lock:
                if row not in request.cancelled_rows:
                    self._owners[b] = (request, row)
                else:
                    self._releases.add(b)
                    self.constraints.left(b)
            self.observer.on_insert(joined_running)

    def _dispatch(self):
        """Dispatch one decode of every slot (asynchronously); returns what `_deliver` needs, or None."""
        with self._lock:
            release = np.zeros(self.slots, bool)
            release[list(self._releases)] = True
            for _ in self._releases:
                self.observer.on_release()
            self._releases.clear()
            owners = list(self._owners)
            queued = self.admission.waiting
        busy = sum(owner is not None for owner in owners)
        if busy == 0 and not release.any():
            return None
        k = ALTERNATIVES if any(o is not None and o[0].prep.top_logprobs for o in owners) else 0
        self.observer.on_dispatch(busy, queued)
        steps = self.steps_per_dispatch
        attend = dispatch_bucket(self._reach, [o is not None for o in owners], steps, self.max_len)
        try:
            self._state, out = self.programs.decode(
                self.gen.params, self._state, release, steps=steps, top_logprobs=k, attend=attend
            )
        except Exception as error:  # noqa: BLE001 - every running request hears of it; the engine starts afresh
            self._fail_all(owners, error)
            return None
        return out, owners

    def _fail_all(self, owners, error: Exception) -> None:
        for request in {o[0] for o in owners if o is not None}:
            self.cancel(request)
            request.on_event(Event("error", error=error))
        self._state = self.programs.free_all(self._state)
        self.constraints.all_left()

    def _deliver(self, out, owners) -> None:
        """Hand a finished dispatch's tokens to their requests: one "tokens" event per row, then "finish"."""
        now = time.perf_counter()
        for b, request, row, event, finish in slot_updates(jax.device_get(out), owners):
            if request.first_token is None:
                request.first_token = now
                self.observer.on_first_token(now - request.arrival)
            request.generated[row] += len(event.tokens)
            request.on_event(event)
            if finish != RUNNING:
                with self._lock:
                    self._owners[b] = None
                    request.open_rows.discard(row)
                    self.constraints.left(b)
                self.observer.on_row_finished(request.generated[row], now - request.first_token)
                request.on_event(Event("finish", row, finish=FINISH_NAMES[finish]))


def dispatch_bucket(reach: np.ndarray, live: list[bool], steps: int, max_len: int) -> int:
    """The positions the next dispatch attends to (`slots.attend_bucket`), from `reach` [B], an upper bound of each
    slot's cache index, which the live slots' `steps` then advance (in place)."""
    live = np.asarray(live)
    furthest = int((reach[live] + steps).max()) if live.any() else 1
    reach[live] = np.minimum(reach[live] + steps, max_len)
    return slots.attend_bucket(furthest, max_len)


def slot_programs(gen, slots_count: int, max_len: int, table=None) -> slots.SlotPrograms:
    """The compiled slot programs of `gen`'s model (its forward pass, its mesh's cache placement)."""
    config, programs = gen.config, gen.programs
    return slots.SlotPrograms(
        programs.logits_fn,
        programs.new_cache,
        slots_count,
        max_len,
        config.vocab_size,
        eos_table(config),
        config.pad_id,
        table,
    )
