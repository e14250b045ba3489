"""The compiled programs of one model: the whole decode (prefill + `while_loop`), its two halves for streaming
(prefill, one step), and scoring. Each is traced once per shape bucket (rows, prompt length, output buffer);
sampling values are traced inputs, so changing them compiles nothing new. `trace_count` counts the traces.
"""

from __future__ import annotations

from functools import partial

import jax

from gpt_jax import loop, speculative
from gpt_jax.config import ModelConfig
from gpt_jax.errors import InputError, check
from gpt_jax.kv_cache import KVCache, init_cache
from gpt_jax.model import Transformer
from gpt_jax.scoring import sequence_log_likelihood
from gpt_jax.sharding import cache_spec


def available_memory_bytes(mesh=None) -> int | None:
    """Memory a decode may use: free accelerator memory over the mesh's devices, or the host's available memory
    (MemAvailable) on CPU; None when it cannot be told."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        devices = mesh.devices.size if mesh is not None else 1
        return devices * (stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cache_length(prompt_len: int, buffer: int) -> int:
    """Cache slots of a decode: the prompt, the output buffer and room for the most proposals a speculative step
    writes past a row's last token. Plain and speculative decodes use the same length, so their attention sums
    run over the same slots (see row_invariant)."""
    return prompt_len + buffer + speculative.MAX_PROPOSED


def decode_bytes(config: ModelConfig, rows: int, prompt_len: int, buffer: int) -> int:
    """An estimate of what one decode allocates besides the weights: the KV cache, the per-row [B, V] state, and
    the prefill's attention scores (fp32, [B, N, T, S]), the largest activation."""
    slots = cache_length(prompt_len, buffer)
    itemsize = jax.numpy.dtype(config.dtype).itemsize
    cache = 2 * config.n_layers * rows * config.n_kv_heads * config.head_dim * slots * itemsize
    state = 6 * rows * config.vocab_size * 4 + 4 * rows * buffer * 4
    scores = rows * config.n_heads * prompt_len * slots * 4
    return cache + state + scores


def check_memory(config: ModelConfig, rows: int, prompt_len: int, buffer: int, mesh=None) -> None:
    """Refuse (InputError) a decode that cannot fit, before it compiles, not by running out halfway through."""
    need, have = decode_bytes(config, rows, prompt_len, buffer), available_memory_bytes(mesh)
    check(
        have is None or need <= have,
        InputError,
        f"this call needs about {need / 2**30:.1f} GiB for its KV cache and activations ({rows} rows x "
        f"{cache_length(prompt_len, buffer)} slots) and {have / 2**30 if have else 0:.1f} GiB are available: "
        "lower max_new_tokens, the prompt length or the number of prompts",
    )


class CompiledPrograms:
    def __init__(self, config: ModelConfig, mesh: jax.sharding.Mesh | None = None):
        self.config, self.mesh = config, mesh
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
            self._extra(proposer),
            buffer=prep.buffer,
            top_logprobs=prep.top_logprobs,
            proposer=proposer,
        )

    def stream_start(self, params, inputs, buffer: int, proposer=None):
        """The state a stream continues from (plain `loop.DecodeState` or `speculative.SpecState`)."""
        if proposer is None:
            return self.start(params, inputs, buffer=buffer)
        return self.speculative_start(params, inputs, self._extra(proposer), buffer=buffer, proposer=proposer)

    def stream_step(self, params, state, inputs, proposer=None):
        """One step of a stream, and the row-0 view (tokens [M], length, done) to read it by."""
        if proposer is None:
            state = self.step(params, state, inputs)
            return state, (state.tokens[0], state.lengths[0], state.done[0])
        state = self.speculative_step(params, state, inputs, self._extra(proposer), proposer=proposer)
        return state, (state.decode.tokens[0], state.decode.lengths[0], state.decode.done[0])

    def _extra(self, proposer) -> dict:
        """A proposer's traced data: the draft's weights, or the reference tokens and their seed."""
        if isinstance(proposer, speculative.DraftModel):
            return {"draft_params": proposer.generator.params}
        if isinstance(proposer, speculative.Reference):
            names = {"reference": proposer.tokens, "key_seed": proposer.seed, "accuracy": proposer.accuracy}
            return {**names, "vocab_size": self.config.vocab_size}
        return {}

    @staticmethod
    def _draft_fn(proposer):
        return proposer.generator.programs.logits_fn if isinstance(proposer, speculative.DraftModel) else None

    def _speculative_start(self, params, inputs, extra, *, buffer: int, proposer, top_logprobs: int = 0):
        """Prefill and the first token; the cache (and a draft's) with room for proposals past a row's last slot."""
        self.trace_count += 1
        b, t = inputs.tokens.shape
        length = cache_length(t, buffer)
        if isinstance(proposer, speculative.DraftModel):
            extra = {**extra, "draft_cache": proposer.generator.programs.new_cache(b, length)}
        cache, draft_fn = self.new_cache(b, length), self._draft_fn(proposer)
        return speculative.start(self.logits_fn, params, inputs, cache, buffer, top_logprobs, proposer, draft_fn, extra)

    def _speculate(self, params, inputs, extra, *, buffer: int, top_logprobs: int, proposer) -> dict:
        spec = self._speculative_start(
            params, inputs, extra, buffer=buffer, proposer=proposer, top_logprobs=top_logprobs
        )
        spec = speculative.run_loop(self.logits_fn, params, spec, inputs, proposer, self._draft_fn(proposer), extra)
        names = ("accepted", "proposed", "passes")
        return {**self._outputs(spec.decode), **{name: getattr(spec, name) for name in names}}

    def _speculative_step(self, params, spec, inputs, extra, *, proposer):
        return speculative.step(self.logits_fn, params, spec, inputs, proposer, self._draft_fn(proposer), extra)

    def logits_fn(self, params, tokens, positions, mask, cache):
        return self.model.apply({"params": params}, tokens, positions, mask, cache)

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
        names = ("tokens", "logprobs", "lengths", "finish", "top_ids", "top_logprobs")
        return {"steps": state.step, **{name: getattr(state, name) for name in names}}

    def _score(self, params, tokens, valid):
        self.trace_count += 1
        return sequence_log_likelihood(self.config, params, tokens, valid)
