"""A request's prompt into a prefill cache, chunk by chunk, reusing the blocks the prefix cache holds.

Two layouts (`plan`):
  - a prompt of at most one chunk C is prefilled as `generate` prefills it: left-padded to its bucket T, one pass;
  - a longer one is aligned: its tokens at columns 0 .. L-1, right-padded to whole chunks, chunk j being columns
    j*C .. (j+1)*C - 1, which attends to a cache of `view_length(j, C)` positions (the cache grows as the chunks
    go). A chunk's arithmetic then depends on its index and the tokens up to it only, never on the prompt's
    length, so its keys and values are the same bits in every prompt that starts with the same tokens: those are
    the blocks the prefix cache keeps (`prefix_cache`), and a hit starts the prefill at the first block missing.

Padding columns after a prompt's end are computed and masked out: a query never sees a later slot, and the slot
they fill is overwritten as the sequence decodes.

Axes: R prefill rows, C chunk, P prefill cache positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from gpt_jax.decoding.batching import bucket
from gpt_jax.model.quantize import Int8Kernel
from gpt_jax.model.row_invariant import ForwardMode
from gpt_jax.serving.group_programs import GroupPrograms
from gpt_jax.serving.prefix_cache import PrefixCache, block_bytes, block_keys, put_block, take_block
from gpt_jax.serving.requests import Prefill, prompt_event


def view_length(chunk_index: int, width: int) -> int:
    """Positions an aligned prompt's chunk `chunk_index` (of `width` columns) attends to: the power of two that
    holds it and every chunk before it."""
    return bucket((chunk_index + 1) * width)


@dataclasses.dataclass
class Layout:
    """How one prompt is prefilled: its columns [R, chunks * width], the left padding of a one-chunk prompt, the
    prompt's length L and the number of whole blocks (cacheable chunks) it holds."""

    tokens: np.ndarray
    pad: int
    width: int
    length: int
    blocks: int

    @property
    def chunks(self) -> int:
        return self.tokens.shape[1] // self.width

    def cache_length(self, chunk_index: int) -> int:
        return view_length(chunk_index, self.width) if self.chunks > 1 else self.width


def plan(inputs, rows: int, chunk: int, pad_id: int) -> Layout:
    """The layout of a prepared request's prompt (row 0 of `inputs`, left-padded [*, T]) on `rows` rows."""
    t, pad = inputs.tokens.shape[1], int(inputs.pad_len[0])
    length = t - pad
    if length <= chunk:
        return Layout(np.asarray(inputs.tokens[:rows]), pad, t, length, length // chunk)  # L = C: one block
    chunks = math.ceil(length / chunk)
    tokens = np.full((rows, chunks * chunk), pad_id, np.int32)
    tokens[:, :length] = inputs.tokens[:rows, pad:]
    return Layout(tokens, 0, chunk, length, length // chunk)


def batches_exactly(gen) -> bool:
    """Whether prompts prefilled in one pass get the bits each gets alone: under the exact arithmetic where the
    CPU kernel computes the prefill (`ForwardMode.fixed_order`), for float32 weights (int8 and bfloat16 products
    keep XLA's kernels, whose sums may change with the row count) and a dense MLP (the experts layer's path
    depends on how many tokens it routes). Elsewhere short prompts are prefilled one by one."""
    int8 = any(is_int8(leaf) for leaf in jax.tree.leaves(gen.params, is_leaf=is_int8))
    return (
        gen.arithmetic == "exact"
        and ForwardMode.PREFILL.fixed_order
        and gen.config.dtype == "float32"
        and not gen.config.n_experts
        and not int8
    )


def is_int8(leaf) -> bool:
    return isinstance(leaf, Int8Kernel)


class Prefiller:
    """Runs prefill chunks for the engine: the slot programs' `prefill`, the prefix cache of `budget_bytes`
    (0: off), and the observer's prefill and prefix-cache hooks."""

    def __init__(self, gen, programs, chunk: int, rows: int, budget_bytes: int, observer):
        self.gen, self.programs, self.chunk, self.rows, self.observer = gen, programs, chunk, rows, observer
        self.cache = PrefixCache(budget_bytes, chunk, block_bytes(gen.config, chunk))
        self.kv_heads = gen.config.n_kv_heads
        self.exact_together = rows == 1 and batches_exactly(gen)
        self.groups = GroupPrograms(programs, gen.params)

    def step(self, job: Prefill) -> int:
        """One chunk of the job's prompt; returns the columns it took. The last one leaves the first token's
        logits (and the prompt's log-probabilities, when asked for, go to the request)."""
        if job.layout is None:
            self._begin(job)
        request, lay, j = job.request, job.layout, job.next
        width, start = lay.width, job.next * lay.width
        if job.cache.length < lay.cache_length(j):
            job.cache = self.programs.grow(job.cache, lay.cache_length(j))
        tokens = lay.tokens[:, start : start + width]
        following = np.pad(lay.tokens[:, start + 1 : start + width + 1], ((0, 0), (0, 1)))[:, :width]
        end = lay.pad + lay.length  # the column after the prompt's last token
        last = np.int32(min(end, start + width) - 1 - start)
        pad_len = np.full((self.rows,), lay.pad, np.int32)
        # the head on the last column alone where no other column's logits are wanted
        last_only = request.prompt_top < 0 and (j + 1 < lay.chunks or last == width - 1)
        logits, job.cache, scores = self.programs.prefill(
            self.gen.params,
            tokens,
            pad_len,
            job.cache,
            following,
            last,
            prompt_top=request.prompt_top,
            last_only=last_only,
        )
        if scores is not None:  # the columns whose following token is a real prompt token
            columns = slice(max(start, lay.pad) - start, min(start + width, end - 1) - start)
            job.scores.append(jax.tree.map(lambda x: np.asarray(x[0, columns]), scores))
        if j < len(job.keys) and not self.cache.has(job.keys[j]):
            self._store(job.keys[j], job.cache, start, width)
        job.next = j + 1
        self.observer.on_prefill(width)
        if job.next >= lay.chunks:
            job.logits = logits[0]
            if request.prompt_top >= 0:
                request.on_event(prompt_event(job.scores, request.prompt_top))
        return width

    def short(self, request) -> bool:
        """Whether a request may be prefilled together with others (`together`): a prompt of one chunk whose
        scores are not asked for, in a process where that keeps its bits (`batches_exactly`)."""
        one_chunk = request.prompt_len <= self.chunk
        return self.exact_together and one_chunk and request.prompt_top < 0 and not request.prefill_alone

    def fits_together(self, count: int, width: int) -> int:
        """How many of `count` short prompts of bucket `width` one pass can take now: `count`, or fewer where the
        program of bucket(count) rows is still compiling (`group_programs`; it is then asked for)."""
        while count >= 2 and self.groups.get(bucket(count), width) is None:
            count = bucket(count) // 2
        return count

    def together(self, jobs: list[Prefill]) -> int:
        """Prefill the prompts of `jobs` (each `short`, all of one bucket T, `fits_together`) in one pass of
        bucket(G) rows, the last ones repeating the first prompt; each job's logits and its own one-row cache are
        then ready. Returns the columns computed (G * T)."""
        layouts = [plan(job.request.prep.inputs, 1, self.chunk, self.gen.config.pad_id) for job in jobs]
        width, rows = layouts[0].width, bucket(len(jobs))
        filler = [layouts[0]] * (rows - len(jobs))
        tokens = np.concatenate([lay.tokens for lay in layouts + filler])
        pad_len = np.array([lay.pad for lay in layouts + filler], np.int32)
        cache = self.programs.new_cache(rows, width).replace(index=np.int32(0))
        program = self.groups.compile(rows, width)  # ready: `fits_together`
        logits, caches = program(self.gen.params, tokens, cache, pad_len)
        for g, (job, lay) in enumerate(zip(jobs, layouts)):
            job.layout, job.cache, job.next, job.logits = lay, caches[g], 1, logits[g]
            job.request.cached_tokens = 0
            if self.cache.enabled:  # nothing to find in a one-chunk prompt; a whole block is kept
                self.observer.on_prefix_lookup(lay.length, 0)
                job.keys = block_keys(lay.tokens[0, lay.pad :], width, lay.blocks)
                if job.keys and not self.cache.has(job.keys[0]):
                    self._store(job.keys[0], job.cache, 0, width)
        self.observer.on_prefill(width * len(jobs), len(jobs))
        return width * len(jobs)

    def _store(self, key: bytes, cache, start: int, width: int) -> None:
        self.cache.store(key, take_block(cache, np.int32(start), kv_heads=self.kv_heads, block=width))

    def _begin(self, job: Prefill) -> None:
        """Plan the prompt, find its cached blocks (not for a prompt that is scored: its every column is needed)
        and start its cache after them."""
        request = job.request
        lay = job.layout = plan(request.prep.inputs, self.rows, self.chunk, self.gen.config.pad_id)
        found = []
        if self.cache.enabled and request.prompt_top < 0:
            job.keys = block_keys(lay.tokens[0, lay.pad :], lay.width, lay.blocks)
            found = self.cache.lookup(job.keys[: (lay.length - 1) // lay.width], lay.length)
            self.observer.on_prefix_lookup(lay.length, len(found) * lay.width)
        job.next = len(found)
        job.cache = self.programs.new_cache(self.rows, lay.cache_length(job.next))
        for j, block in enumerate(found):
            job.cache = put_block(job.cache, block, np.int32(j * lay.width))
        job.cache = job.cache.replace(index=np.int32(job.next * lay.width))
        request.cached_tokens = job.next * lay.width
