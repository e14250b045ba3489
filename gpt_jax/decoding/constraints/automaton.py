"""A constraint's regex -> a token automaton over one tokenizer's exact bytes per id, as arrays (host side).

outlines-core builds the byte-level DFA of the regex and walks it with every token's bytes (its `Index`); this
module keeps the result as arrays a jitted step can index:

    allowed [Q, W] uint32   bit t % 32 of word t // 32: token t may follow state q (EOS excluded: see accepting)
    accepting [Q] bool      the text so far is a full match: EOS may end it here
    dead_end [Q] bool       accepting with no token to follow: the row is finished
    default_next [Q] int32  the state most of q's tokens lead to
    offsets [Q + 1] int32   q's exceptions (tokens leading elsewhere) are entries offsets[q] .. offsets[q+1] - 1
    edge_tokens [X] int32   of the exceptions, sorted by token id within a state
    edge_next [X] int32

The vocabulary holds every id with bytes except special ids (control pieces, unknown, EOS): a constrained row never
emits one but EOS, and EOS only in accepting states. States are renumbered 0 .. Q-1, the initial state 0.

outlines-core's index (0.2.14, measured) drops what may follow a complete match: `(ab)+` takes "ab" but not
"abab". So the regex is compiled with a sentinel character after it, `(?:R)` + U+10FFFF, spelled by one stand-in
token of its own: R's accepting states are those where reading the sentinel ends the whole match (inside a JSON
string it is text, and leads on), and the sentinel's own edges are then dropped. Tokens holding the byte 0xF4
(characters from U+100000 on, the second private use plane) are left out, so nothing else can spell it.
Automata are cached in memory by (regex, tokenizer); `compile_seconds` says what a miss cost.

Axes: Q states, W = ceil(V / 32) mask words, X exception entries.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict

import numpy as np

from gpt_jax.decoding.constraints.spec import library
from gpt_jax.errors import ConstraintError

SENTINEL = "\U0010ffff"
SENTINEL_LEAD = 0xF4  # the first byte of the sentinel's UTF-8 encoding; no token holding it is kept
MAX_AUTOMATON_BYTES = 256 << 20  # an automaton's device arrays, at most (bigger: refused before any compile)
CACHE_ENTRIES = 64


@dataclasses.dataclass(frozen=True)
class TokenAutomaton:
    allowed: np.ndarray
    accepting: np.ndarray
    dead_end: np.ndarray
    default_next: np.ndarray
    offsets: np.ndarray
    edge_tokens: np.ndarray
    edge_next: np.ndarray
    compile_seconds: float

    @property
    def states(self) -> int:
        return len(self.accepting)

    @property
    def nbytes(self) -> int:
        arrays = (self.allowed, self.accepting, self.dead_end, self.default_next, self.offsets)
        return sum(a.nbytes for a in arrays) + self.edge_tokens.nbytes + self.edge_next.nbytes

    def allowed_ids(self, state: int) -> np.ndarray:
        """The ids (EOS excluded) allowed in `state`, from the bitmask."""
        bits = np.unpackbits(self.allowed[state].view(np.uint8), bitorder="little")
        return np.flatnonzero(bits)

    def next_state(self, state: int, token: int) -> int:
        lo, hi = self.offsets[state], self.offsets[state + 1]
        i = lo + np.searchsorted(self.edge_tokens[lo:hi], token)
        return int(self.edge_next[i]) if i < hi and self.edge_tokens[i] == token else int(self.default_next[state])


def special_ids(tokenizer, eos_ids) -> set[int]:
    """Ids a constrained row never emits as text: EOS ids, pad, unknown, and ids without bytes (control pieces)."""
    out = {int(i) for i in eos_ids} | {tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id}
    out |= set(tokenizer.special_texts.values())
    return {i for i in out if i >= 0}


_VOCABULARIES: dict = {}
_AUTOMATA: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _vocabulary(tokenizer, eos_ids: tuple[int, ...]):
    Vocabulary = library().Vocabulary

    key = (id(tokenizer), eos_ids)
    if key not in _VOCABULARIES:
        skip = special_ids(tokenizer, eos_ids)
        by_bytes: dict[bytes, list[int]] = {}
        for i in range(tokenizer.vocab_size):
            piece = tokenizer.token_bytes(i)
            if piece and i not in skip and SENTINEL_LEAD not in piece:
                by_bytes.setdefault(piece, []).append(i)
        by_bytes[SENTINEL.encode()] = [tokenizer.vocab_size]  # the sentinel's stand-in id
        stand_in_eos = tokenizer.vocab_size + 1  # the library needs one; its edges are dropped
        _VOCABULARIES[key] = (tokenizer, Vocabulary(stand_in_eos, by_bytes))  # the tokenizer kept alive
    return _VOCABULARIES[key][1]


def compile_automaton(regex: str, tokenizer, eos_ids=()) -> TokenAutomaton:
    """The token automaton of `regex` over `tokenizer` (cached by both)."""
    eos_ids = tuple(sorted(int(i) for i in eos_ids if i >= 0))
    key = (regex, id(tokenizer), eos_ids)
    with _LOCK:
        if key in _AUTOMATA:
            _AUTOMATA.move_to_end(key)
            return _AUTOMATA[key]
        automaton = _build(regex, tokenizer, eos_ids)
        _AUTOMATA[key] = automaton
        while len(_AUTOMATA) > CACHE_ENTRIES:
            _AUTOMATA.popitem(last=False)
        return automaton


def clear_cache() -> None:
    """Forget every compiled automaton (the next compile of each is a miss, as a benchmark wants)."""
    with _LOCK:
        _AUTOMATA.clear()


def _build(regex: str, tokenizer, eos_ids) -> TokenAutomaton:
    Index = library().Index

    began = time.perf_counter()
    vocabulary, sentinel = _vocabulary(tokenizer, eos_ids), tokenizer.vocab_size
    try:
        index = Index(f"(?:{regex}){SENTINEL}", vocabulary)
    except ValueError as e:
        raise ConstraintError(f"the constraint's regex cannot be compiled over this vocabulary: {e}") from None
    everything = index.get_transitions()  # {state: {token: next state}}, the library's bulk answer
    edges = {}  # state -> (tokens, next states) as arrays, the sentinel's edge left out
    ends = set()  # accepting: the sentinel read there ends the whole match (elsewhere it may be text, as in a string)
    for s, out in everything.items():
        tokens = np.fromiter(out.keys(), np.int64, len(out))
        targets = np.fromiter(out.values(), np.int64, len(out))
        keep = tokens < sentinel
        if sentinel in out and index.is_final_state(out[sentinel]):
            ends.add(s)
        edges[s] = (tokens[keep], targets[keep])
    del everything
    order, seen = [index.get_initial_state()], {index.get_initial_state()}
    for s in order:  # the states reachable without the sentinel, breadth first
        targets = edges[s][1] if s in edges else np.zeros(0, np.int64)
        for n in targets[np.sort(np.unique(targets, return_index=True)[1])].tolist():  # in the library's order
            if n not in seen:
                seen.add(n)
                order.append(n)
    q_count, words = len(order), -(-tokenizer.vocab_size // 32)
    size = q_count * (words * 4 + 14)
    if size > MAX_AUTOMATON_BYTES:
        raise ConstraintError(
            f"the constraint's automaton has {q_count} states: {size / 2**20:.0f} MiB on the device, more than "
            f"the limit of {MAX_AUTOMATON_BYTES >> 20} MiB; simplify the regex or schema (fewer bounded repeats)"
        )
    number = np.zeros(max(order) + 1, np.int64)
    number[order] = np.arange(q_count)
    bits = np.zeros((q_count, words * 32), bool)
    accepting = np.array([s in ends for s in order], bool)
    default_next = np.arange(q_count, dtype=np.int32)
    offsets, edge_tokens, edge_next = np.zeros(q_count + 1, np.int64), [], []
    for q, s in enumerate(order):
        tokens, targets = edges.get(s, (np.zeros(0, np.int64),) * 2)
        exceptions = 0
        if len(tokens):
            targets = number[targets]
            bits[q, tokens] = True
            default_next[q] = np.bincount(targets).argmax()
            elsewhere = targets != default_next[q]
            by_token = np.argsort(tokens[elsewhere], kind="stable")
            edge_tokens.append(tokens[elsewhere][by_token])
            edge_next.append(targets[elsewhere][by_token])
            exceptions = len(by_token)
        offsets[q + 1] = offsets[q] + exceptions
    dead_end = accepting & ~bits.any(axis=1)
    edge_tokens = np.concatenate(edge_tokens) if edge_tokens else np.zeros(0, np.int64)
    edge_next = np.concatenate(edge_next) if edge_next else np.zeros(0, np.int64)
    return TokenAutomaton(
        allowed=np.packbits(bits, axis=1, bitorder="little").view(np.uint32),
        accepting=accepting,
        dead_end=dead_end,
        default_next=default_next,
        offsets=np.array(offsets, np.int32),
        edge_tokens=np.array(edge_tokens, np.int32),
        edge_next=np.array(edge_next, np.int32),
        compile_seconds=time.perf_counter() - began,
    )
