"""Token automata on the device: several stacked into one table, each row carrying its own state.

`stack` puts the automata of a call (or of the serving pool) one after another: their states renumbered into one
range, so a row's state is an index into the table and -1 means the row is free. The decode loop reads the table
through `allowed` (the mask, applied before temperature and the filters) and `follow` (the state a chosen token
leads to); both are gathers, no host round trip. Table sizes are bucketed (powers of two), so calls with other
constraints of similar size reuse the compiled program.

Axes: B rows, V vocabulary, W mask words, Q states, X exception entries, E eos ids.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.decoding.batching import bucket
from gpt_jax.decoding.constraints.automaton import TokenAutomaton

FREE = -1  # the state of an unconstrained row


@flax.struct.dataclass
class Automata:
    allowed: jax.Array  # [Q, W] uint32
    accepting: jax.Array  # [Q] bool
    dead_end: jax.Array  # [Q] bool
    default_next: jax.Array  # [Q] int32
    edge_start: jax.Array  # [Q] int32: state q's exceptions are entries edge_start[q] .. edge_end[q] - 1
    edge_end: jax.Array  # [Q] int32
    edge_tokens: jax.Array  # [X] int32
    edge_next: jax.Array  # [X] int32


def empty(vocab_size: int, states: int = 1, exceptions: int = 1) -> Automata:
    """A table of `states` states that allow nothing (what a call without constraints carries)."""
    return Automata(
        allowed=np.zeros((states, -(-vocab_size // 32)), np.uint32),
        accepting=np.zeros((states,), bool),
        dead_end=np.zeros((states,), bool),
        default_next=np.arange(states, dtype=np.int32),
        edge_start=np.zeros((states,), np.int32),
        edge_end=np.zeros((states,), np.int32),
        edge_tokens=np.full((exceptions,), np.iinfo(np.int32).max, np.int32),
        edge_next=np.zeros((exceptions,), np.int32),
    )


def write(table: Automata, a: TokenAutomaton, state: int, entry: int) -> None:
    """Put `a` into the host arrays of `table` at states state .. and exception entries entry .. (in place)."""
    n, m = a.states, len(a.edge_tokens)
    table.allowed[state : state + n] = a.allowed
    table.accepting[state : state + n] = a.accepting
    table.dead_end[state : state + n] = a.dead_end
    table.default_next[state : state + n] = a.default_next + state
    table.edge_start[state : state + n] = a.offsets[:-1] + entry
    table.edge_end[state : state + n] = a.offsets[1:] + entry
    table.edge_tokens[entry : entry + m] = a.edge_tokens
    table.edge_next[entry : entry + m] = a.edge_next + state


def stack(automata: list[TokenAutomaton], vocab_size: int) -> tuple[Automata, list[int]]:
    """One table holding `automata` in turn (sizes bucketed), and each one's initial state in it."""
    q = sum(a.states for a in automata)
    x = sum(len(a.edge_tokens) for a in automata)
    table = empty(vocab_size, bucket(max(q, 1), 64), bucket(max(x, 1), 4096))  # small ones share a program
    starts, state, entry = [], 0, 0
    for a in automata:
        write(table, a, state, entry)
        starts.append(state)
        state, entry = state + a.states, entry + len(a.edge_tokens)
    return table, starts


def allowed(table: Automata, state: jax.Array, eos_ids: jax.Array, vocab_size: int) -> jax.Array:
    """[B, V] bool: the tokens each row may choose; every token for a free row (state -1). EOS ids [E] (-1 unused)
    are allowed in accepting states. A constrained state that allows nothing (cannot happen for a well-formed
    automaton) allows EOS, so no row is ever left without a token."""
    q = jnp.maximum(state, 0)
    words = table.allowed[q]  # [B, W]
    ids = jnp.arange(vocab_size, dtype=jnp.int32)
    bits = (words[:, ids // 32] >> (ids % 32).astype(jnp.uint32)) & jnp.uint32(1)
    is_eos = jnp.any(ids[None, :] == eos_ids[:, None], axis=0)  # [V]
    stuck = ~jnp.any(bits > 0, axis=-1) & ~table.dead_end[q]
    eos_ok = table.accepting[q] | stuck
    mask = (bits > 0) | (is_eos[None, :] & eos_ok[:, None])
    return mask | (state < 0)[:, None]


def follow(table: Automata, state: jax.Array, token: jax.Array) -> jax.Array:
    """[B] the state `token` [B] leads to from `state` [B] (free rows stay free): a bisection of the state's
    exception entries, else its default next state."""
    q = jnp.maximum(state, 0)
    lo, hi = table.edge_start[q], table.edge_end[q]
    steps = max(1, int(np.ceil(np.log2(table.edge_tokens.shape[0] + 1))))

    def halve(_, bounds):  # first entry in [lo, hi) whose token is >= `token`
        lo, hi = bounds
        mid = (lo + hi) // 2
        go_right = (table.edge_tokens[mid] < token) & (lo < hi)
        return jnp.where(go_right, mid + 1, lo), jnp.where(go_right | (lo >= hi), hi, mid)

    first, _ = jax.lax.fori_loop(0, steps, halve, (lo, hi))
    entry = jnp.minimum(first, table.edge_tokens.shape[0] - 1)
    found = (first < hi) & (table.edge_tokens[entry] == token)
    target = jnp.where(found, table.edge_next[entry], table.default_next[q])
    return jnp.where(state < 0, state, target)
