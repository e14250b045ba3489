"""The serving slots' automata: one device table of fixed size (states and exception entries), like the KV cache's
slots, into which a request's automaton is written when it joins; the decode program reads the table by each
slot's state, so placing an automaton never recompiles it.

An automaton stays placed while a slot uses it (counted per slot) and afterwards, for the next request with the
same constraint, until its room is needed: then the least recently used unused ones are taken out. A request
whose automaton does not fit now waits in the queue; one larger than the whole table is refused when it comes.

Axes: Q states, W mask words, X exception entries.
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import numpy as np

from gpt_jax.decoding.constraints import device
from gpt_jax.decoding.constraints.automaton import TokenAutomaton
from gpt_jax.errors import ConstraintError, InputError, check

DEFAULT_STATES = 4096
EXCEPTIONS_PER_STATE = 64


def check_constraint_states(states) -> None:
    check(
        isinstance(states, (int, np.integer)) and not isinstance(states, bool) and 0 <= states <= 1 << 20,
        InputError,
        f"constraint_states must be an integer in [0, {1 << 20}] (0: no constrained requests), got {states!r}",
    )


class Ranges:
    """First-fit allocation of ranges in [0, size)."""

    def __init__(self, size: int):
        self.size, self.used = size, {}  # start -> length

    def take(self, length: int) -> int | None:
        at = 0
        for start in sorted(self.used):
            if start - at >= length:
                break
            at = start + self.used[start]
        if at + length > self.size:
            return None
        self.used[at] = length
        return at

    def give(self, start: int) -> None:
        del self.used[start]


def empty_table(vocab_size: int, states: int) -> device.Automata:
    """The slots' table before any automaton is placed (the slot state carries it, the pool fills it)."""
    return device.empty(vocab_size, states, states * EXCEPTIONS_PER_STATE)


def table_bytes(vocab_size: int, states: int) -> int:
    """The device bytes of a table of `states` states (checked: `check_constraint_states`)."""
    check_constraint_states(states)
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(empty_table(vocab_size, 1))) * states


class ConstraintPool:
    """Which automata sit where in a table of `states` states (and EXCEPTIONS_PER_STATE times as many exception
    entries) for `vocab_size` ids. The table itself travels in the slot state; `acquire` returns it updated."""

    def __init__(self, vocab_size: int, states: int = DEFAULT_STATES):
        self.vocab_size, self.capacity = vocab_size, states
        self._states, self._entries = Ranges(states), Ranges(states * EXCEPTIONS_PER_STATE)
        self._placed: OrderedDict[int, tuple[TokenAutomaton, int, int]] = OrderedDict()  # id -> (a, state, entry)
        self._users: dict[int, int] = {}
        self._at: dict[int, int] = {}  # initial state -> id of the automaton placed there
        self._write = jax.jit(_write_part)

    def check_fits(self, a: TokenAutomaton) -> None:
        """ConstraintError when `a` could never be placed, even in an empty pool."""
        check(
            a.states <= self.capacity and len(a.edge_tokens) <= self.capacity * EXCEPTIONS_PER_STATE,
            ConstraintError,
            f"the constraint's automaton has {a.states} states and {len(a.edge_tokens)} exception entries; this "
            f"server holds {self.capacity} states ({self.capacity * EXCEPTIONS_PER_STATE} entries) for automata "
            "(gpt-jax serve --constraint-states)",
        )

    def acquire(self, a: TokenAutomaton, table: device.Automata, uses: int = 1):
        """(`a`'s initial state, the table with `a` in it), placing it if it is not there (and taking out unused
        ones if room is needed), counted as used `uses` times until as many `release`s; (None, table) when it does
        not fit now."""
        key = id(a)
        if key not in self._placed:
            table = self._place(a, table)
            if table is None:
                return None, None
        self._placed.move_to_end(key)
        self._users[key] = self._users.get(key, 0) + uses
        return self._placed[key][1], table

    def release(self, state: int) -> None:
        """A slot that used the automaton starting at `state` is done with it."""
        self._users[self._at[state]] -= 1

    def _place(self, a: TokenAutomaton, table: device.Automata):
        while True:
            state = self._states.take(a.states)
            entry = self._entries.take(max(len(a.edge_tokens), 1)) if state is not None else None
            if entry is not None:
                break
            if state is not None:
                self._states.give(state)
            unused = [key for key in self._placed if self._users.get(key, 0) == 0]
            if not unused:
                return None
            _, old_state, old_entry = self._placed.pop(unused[0])
            self._users.pop(unused[0], None)
            del self._at[old_state]
            self._states.give(old_state)
            self._entries.give(old_entry)
        part = device.empty(self.vocab_size, a.states, max(len(a.edge_tokens), 1))
        device.write(part, a, 0, 0)
        part = part.replace(
            default_next=part.default_next + state,
            edge_start=part.edge_start + entry,
            edge_end=part.edge_end + entry,
            edge_next=part.edge_next + state,
        )
        self._placed[id(a)] = (a, state, entry)  # the automaton is kept alive, so its id stays its own
        self._at[state] = id(a)
        return self._write(table, part, np.int32(state), np.int32(entry))


def _write_part(table: device.Automata, part: device.Automata, state, entry) -> device.Automata:
    """`part`'s states written from `state` on, its exception entries from `entry` on."""
    by_state = ("allowed", "accepting", "dead_end", "default_next", "edge_start", "edge_end")
    out = {}
    for name in by_state + ("edge_tokens", "edge_next"):
        full, piece = getattr(table, name), getattr(part, name)
        at = (state if name in by_state else entry,) + (0,) * (full.ndim - 1)
        out[name] = jax.lax.dynamic_update_slice(full, piece, at)
    return table.replace(**out)


class SlotConstraints:
    """The engine's side: each request's automaton acquired for its rows when they join, released when a slot
    ends; `states` 0 means no request may be constrained."""

    def __init__(self, vocab_size: int, states: int):
        check_constraint_states(states)
        self.pool = ConstraintPool(vocab_size, states) if states else None
        self._slot_state: dict[int, int] = {}  # slot -> the initial state it acquired

    def check(self, automata):
        """A request's automata (one, or None: `generator.automata_of`) checked to fit here, as a tuple."""
        automaton = automata[0] if automata else None
        if automaton is None:
            return None
        check(
            self.pool is not None,
            ConstraintError,
            "this server takes no constraints (it was started with --constraint-states 0)",
        )
        self.pool.check_fits(automaton)
        return tuple(automata)

    def reserve(self, prep, slot_state):
        """For a prepared request about to join: (the initial state for its rows, the slot state with its automaton
        placed); (FREE, same) for a free request; (None, None) when the automaton does not fit now (it waits)."""
        if not prep.automata or prep.automata[0] is None:
            return device.FREE, slot_state
        constraints = slot_state.rules.constraints
        start, table = self.pool.acquire(prep.automata[0], constraints.table, prep.rows)
        if start is None:
            return None, None
        rules = slot_state.rules.replace(constraints=constraints.replace(table=table))
        return start, slot_state.replace(rules=rules)

    def joined(self, slot: int, start: int) -> None:
        if start != device.FREE:
            self._slot_state[slot] = start

    def left(self, slot: int) -> None:
        start = self._slot_state.pop(slot, None)
        if start is not None:
            self.pool.release(start)

    def all_left(self) -> None:
        for slot in list(self._slot_state):
            self.left(slot)
