"""The compiled programs of one model: the whole decode (prefill + `while_loop`), its two halves for streaming
(prefill, one step), speculative decodes, and scoring. Each is traced once per shape bucket (rows, prompt length,
output buffer); sampling values are traced inputs, so changing them compiles nothing new. `trace_count` counts the
traces. What a decode needs in memory is `memory.py`'s.
"""

from __future__ import annotations

from functools import partial

import jax

from gpt_jax.decoding import loop
from gpt_jax.decoding.speculation import verify as speculative
from gpt_jax.decoding.speculation.proposer import MAX_PROPOSED
from gpt_jax.decoding.scoring import sequence_log_likelihood
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.kv_cache import KVCache, init_cache
from gpt_jax.model.row_invariant import ForwardMode, check_arithmetic
from gpt_jax.model.transformer import Transformer
from gpt_jax.parallel.sharding import cache_spec


def cache_length(prompt_len: int, buffer: int) -> int:
    """Cache slots of a decode: the prompt, the output buffer and room for the most proposals a speculative step
    writes past a row's last token. Plain and speculative decodes use the same length, so their attention sums
    run over the same slots (see row_invariant)."""
    return prompt_len + buffer + MAX_PROPOSED


class CompiledPrograms:
    """`arithmetic`: "exact" (decode steps and verification passes row-invariant) or "fast" (every pass in XLA's
    own sums and whole products); see row_invariant."""

    def __init__(self, config: ModelConfig, mesh: jax.sharding.Mesh | None = None, arithmetic: str = "exact"):
        self.config, self.mesh, self.arithmetic = config, mesh, check_arithmetic(arithmetic)
        self.model = Transformer(config)
        self.trace_count = 0
        self.generate = jax.jit(self._generate, static_argnames=("buffer", "top_logprobs"))
        self.start = jax.jit(self._start, static_argnames=("buffer", "top_logprobs"))
        self.step = jax.jit(partial(loop.decode_step, self.logits_fn), donate_argnums=(1,))
        self.score = jax.jit(self._score)
        self.speculate = jax.jit(self._speculate, static_argnames=("buffer", "top_logprobs", "proposer"))
        self.speculative_start = jax.jit(self._speculative_start, static_argnames=("buffer", "proposer"))
        self.speculative_step = jax.jit(self._speculative_step, static_argnames=("proposer",), donate_argnums=(1,))

    def run(self, params, prep, proposer=None) -> dict:
        """The whole decode of a prepared call, plain or speculative: its outputs as arrays."""
        if proposer is None:
            return self.generate(params, prep.inputs, buffer=prep.buffer, top_logprobs=prep.top_logprobs)
        return self.speculate(
            params,
            prep.inputs,
            proposer.traced(self.config),
            buffer=prep.buffer,
            top_logprobs=prep.top_logprobs,
            proposer=proposer,
        )

    def stream_start(self, params, inputs, buffer: int, proposer=None):
        """The state a stream continues from (plain `loop.DecodeState` or `speculative.SpecState`)."""
        if proposer is None:
            return self.start(params, inputs, buffer=buffer)
        return self.speculative_start(params, inputs, proposer.traced(self.config), buffer=buffer, proposer=proposer)

    def stream_step(self, params, state, inputs, proposer=None):
        """One step of a stream, and the row-0 view (tokens [M], length, done) to read it by."""
        if proposer is None:
            state = self.step(params, state, inputs)
            decode = state
        else:
            state = self.speculative_step(params, state, inputs, proposer.traced(self.config), proposer=proposer)
            decode = state.decode
        return state, (decode.tokens[0], decode.rows.lengths[0], decode.rows.done[0])

    def _speculative_start(self, params, inputs, extra, *, buffer: int, proposer, top_logprobs: int = 0):
        """Prefill and the first token; the cache (and a proposer's) with room for proposals past a row's last slot."""
        self.trace_count += 1
        b, t = inputs.tokens.shape
        cache = self.new_cache(b, cache_length(t, buffer))
        return speculative.start(self.logits_fn, params, inputs, cache, buffer, top_logprobs, proposer, extra)

    def _speculate(self, params, inputs, extra, *, buffer: int, top_logprobs: int, proposer) -> dict:
        spec = self._speculative_start(
            params, inputs, extra, buffer=buffer, proposer=proposer, top_logprobs=top_logprobs
        )
        spec = speculative.run_loop(self.logits_fn, params, spec, inputs, proposer, extra)
        names = ("accepted", "proposed", "passes")
        return {**self._outputs(spec.decode), **{name: getattr(spec, name) for name in names}}

    def _speculative_step(self, params, spec, inputs, extra, *, proposer):
        return speculative.step(self.logits_fn, params, spec, inputs, proposer, extra)

    def logits_fn(self, params, tokens, positions, mask, cache, mode: ForwardMode, last_only: bool = False):
        if self.arithmetic == "fast":
            mode = ForwardMode.FAST  # XLA's own arithmetic for every pass
        return self.model.apply({"params": params}, tokens, positions, mask, cache, mode=mode, last_only=last_only)

    def new_cache(self, rows: int, length: int) -> KVCache:
        """An empty cache, its rows spread over the mesh (rows on data, kv heads on model) when there is one."""
        cache = init_cache(self.config, rows, length)
        if self.mesh is None:
            return cache
        spec = jax.sharding.NamedSharding(self.mesh, cache_spec())
        return cache.replace(
            k=tuple(jax.lax.with_sharding_constraint(k, spec) for k in cache.k),
            v=tuple(jax.lax.with_sharding_constraint(v, spec) for v in cache.v),
        )

    def _start(self, params, inputs: loop.DecodeInputs, *, buffer: int, top_logprobs: int = 0) -> loop.DecodeState:
        self.trace_count += 1
        b, t = inputs.tokens.shape
        return loop.start(
            self.logits_fn, params, inputs, self.new_cache(b, cache_length(t, buffer)), buffer, top_logprobs
        )

    def _generate(self, params, inputs: loop.DecodeInputs, *, buffer: int, top_logprobs: int = 0) -> dict:
        self.trace_count += 1
        b, t = inputs.tokens.shape
        cache = self.new_cache(b, cache_length(t, buffer))
        return self._outputs(loop.generate_loop(self.logits_fn, params, inputs, cache, buffer, top_logprobs))

    @staticmethod
    def _outputs(state: loop.DecodeState) -> dict:
        names = ("tokens", "logprobs", "top_ids", "top_logprobs")
        outputs = {name: getattr(state, name) for name in names}
        return {"steps": state.step, "lengths": state.rows.lengths, "finish": state.rows.finish, **outputs}

    def _score(self, params, tokens, valid):
        self.trace_count += 1
        return sequence_log_likelihood(self.config, params, tokens, valid)
