"""The public pipeline: `Generator` composes the nine steps behind `generate`, `generate_ids` and `score`.

text -(1 tokenize)-> ids -(2 left-pad)-> batch -(3, 4 model)-> logits -(5, 6 sample)-> token
     -(7 append, 8 stop; in one jitted while_loop)-> ids -(9 detokenize)-> text
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import decode
from gpt_jax.batching import MIN_LENGTH_BUCKET, bucket, left_pad
from gpt_jax.config import ModelConfig
from gpt_jax.errors import InputError, TokenizerError, check
from gpt_jax.kv_cache import init_cache
from gpt_jax.model import Transformer, forward, init_params
from gpt_jax.settings import Prepared, check_ids, first_stop, held_back, prepare
from gpt_jax.tokenizer import IncrementalDecoder, Tokenizer


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """One entry per prompt. token_ids are the generated ids (EOS included when it ended the row)."""

    token_ids: list[list[int]]
    finish_reasons: list[str]
    logprobs: list[list[float]]
    seed: int
    steps: int  # decode-loop iterations (prefill's token counts as one)
    texts: list[str] | None = None
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None  # per row, per token: (id, logprob) x k


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Per text: total log-likelihood (nats) of its tokens after the first, and how many tokens were scored."""

    log_likelihood: list[float]
    num_tokens: list[int]

    @property
    def perplexity(self) -> float:
        return math.exp(-sum(self.log_likelihood) / max(sum(self.num_tokens), 1))


class Generator:
    """A model (config + params) with its tokenizer, and the compiled functions of the pipeline.

    Compiled programs are cached per shape bucket (rows, prompt length, output buffer): a call with another prompt
    length in the same bucket, or other sampling values, compiles nothing new. `trace_count` counts the traces.
    """

    def __init__(self, config: ModelConfig, params: dict, tokenizer: Tokenizer | None = None, mesh=None):
        """`mesh`: a jax.sharding.Mesh with axes ("data", "model"); params are placed by `sharding` rules."""
        self.config, self.tokenizer, self.mesh = config, tokenizer, mesh
        if mesh is not None:
            from gpt_jax import sharding

            check(
                tuple(mesh.axis_names) == sharding.AXES,
                InputError,
                f"mesh axes must be {sharding.AXES}, got {tuple(mesh.axis_names)}",
            )
            params = sharding.shard_params(config, params, mesh)
        self.params = params
        self.model = Transformer(config)
        self.trace_count = 0
        self._generate_jit = jax.jit(self._generate_traced, static_argnames=("buffer", "top_logprobs"))
        self._start_jit = jax.jit(self._start_traced, static_argnames=("buffer", "top_logprobs"))
        self._step_jit = jax.jit(partial(decode.decode_step, self.logits_fn), donate_argnums=(1,))
        self._score_jit = jax.jit(self._score_traced)

    @classmethod
    def from_config(
        cls, config: ModelConfig, tokenizer: Tokenizer | None = None, key: jax.Array | int = 0, mesh=None
    ) -> Generator:
        """Random weights for `config` (the tokenizer, if given, must match its vocabulary)."""
        if isinstance(key, int):
            key = jax.random.key(key)
        if tokenizer is not None:
            check(
                tokenizer.vocab_size == config.vocab_size,
                InputError,
                f"tokenizer vocab_size {tokenizer.vocab_size} != config vocab_size {config.vocab_size}",
            )
        return cls(config, init_params(config, key), tokenizer, mesh)

    def quantize_int8(self, activations: bool = False) -> Generator:
        """A new Generator whose projection kernels are int8 with per-output-channel scales.

        Weight-only by default; `activations=True` also quantizes each token's activations on the fly (one scale
        per token) so the products run in int8 (see quantize.py for when each pays).
        """
        from gpt_jax.quantize import quantize_params

        params = jax.jit(partial(quantize_params, activations=activations))(self.params)
        return Generator(self.config, params, self.tokenizer, self.mesh)

    def logits_fn(self, params, tokens, positions, mask, cache):
        return self.model.apply({"params": params}, tokens, positions, mask, cache)

    # ---- generation -------------------------------------------------------------------------------------------
    def _new_cache(self, rows: int, length: int):
        cache = init_cache(self.config, rows, length)
        if self.mesh is not None:
            from gpt_jax.sharding import cache_spec

            spec = jax.sharding.NamedSharding(self.mesh, cache_spec())
            cache = cache.replace(
                k=tuple(jax.lax.with_sharding_constraint(k, spec) for k in cache.k),
                v=tuple(jax.lax.with_sharding_constraint(v, spec) for v in cache.v),
            )
        return cache

    def _start_traced(self, params, tokens, inputs, seed, row_seeds, *, buffer, top_logprobs=0):
        self.trace_count += 1
        cache = self._new_cache(tokens.shape[0], tokens.shape[1] + buffer)
        return decode.start(self.logits_fn, params, tokens, inputs, cache, seed, row_seeds, buffer, top_logprobs)

    def _generate_traced(self, params, tokens, inputs, seed, row_seeds, *, buffer, top_logprobs=0):
        self.trace_count += 1
        cache = self._new_cache(tokens.shape[0], tokens.shape[1] + buffer)
        state = decode.generate_loop(
            self.logits_fn, params, tokens, inputs, cache, seed, row_seeds, buffer, top_logprobs
        )
        return {
            "tokens": state.tokens,
            "logprobs": state.logprobs,
            "lengths": state.lengths,
            "finish": state.finish,
            "steps": state.step,
            "top_ids": state.top_ids,
            "top_logprobs": state.top_logprobs,
        }

    def _prepare(self, prompts, **settings) -> Prepared:
        return prepare(self.config, self.mesh, prompts, **settings)

    def _check_ids(self, i: int, ids, what: str = "prompt") -> list[int]:
        return check_ids(self.config, i, ids, what)

    def generate_ids(self, prompts: Sequence[Sequence[int]], **settings) -> GenerationResult:
        """Token ids in, generated token ids out (no tokenizer involved).

        Settings: max_new_tokens (64), temperature (0.8; 0 is greedy), top_k (0: off), top_p (0.95; 1: off),
        min_p (0: off), seed (None draws one, returned in the result), row_seeds (default: the row index),
        ignore_eos (False), repetition_penalty (1: off), presence_penalty and frequency_penalty (0: off; in
        [-2, 2]), logit_bias ({token id: value}), min_new_tokens (0; EOS is masked until then); see penalties.py.
        Each may be a scalar or one value per prompt. Row r samples its t-th token with key
        fold_in(fold_in(key(seed), row_seeds[r]), t).
        """
        prep = self._prepare(prompts, **settings)
        out = self._generate_jit(
            self.params,
            prep.tokens,
            prep.inputs,
            np.uint32(prep.seed),
            prep.row_seeds,
            buffer=prep.buffer,
            top_logprobs=prep.top_logprobs,
        )
        out = jax.device_get(out)
        rows, lengths = prep.rows, out["lengths"][: prep.rows]
        return GenerationResult(
            token_ids=[out["tokens"][r, : lengths[r]].tolist() for r in range(rows)],
            finish_reasons=[decode.FINISH_NAMES[int(f)] for f in out["finish"][:rows]],
            logprobs=[out["logprobs"][r, : lengths[r]].tolist() for r in range(rows)],
            seed=prep.seed,
            steps=int(out["steps"]),
            top_logprobs=[
                [
                    list(zip(out["top_ids"][r, i].tolist(), out["top_logprobs"][r, i].tolist()))
                    for i in range(lengths[r])
                ]
                for r in range(rows)
            ]
            if prep.top_logprobs
            else None,
        )

    def stream_ids(self, prompt: Sequence[int], **settings) -> Iterator[int]:
        """Yield one prompt's generated ids as they are chosen: the decode step runs from a Python loop.

        Same settings, keys and compiled step as `generate_ids`, so the ids are those `generate_ids` returns.
        """
        prep = self._prepare([prompt], **settings)
        args = (self.params, prep.tokens, prep.inputs, np.uint32(prep.seed), prep.row_seeds)
        state = self._start_jit(*args, buffer=prep.buffer)
        while True:
            state = self._step_jit(self.params, state, prep.inputs)
            token, done = jax.device_get((state.last[0], state.done[0]))
            yield int(token)
            if done:
                return

    def stream(self, prompt: str, *, stop: str | Sequence[str] | None = None, **settings) -> Iterator[str]:
        """Yield the continuation of one text prompt piece by piece; pieces never split a UTF-8 character.

        The pieces concatenate to `generate(prompt, stop=stop, **settings).texts[0]` for the same seed. Text that
        could be the start of a stop string is held back until it is known not to be one.
        """
        tok = self._require_tokenizer()
        check(isinstance(prompt, str), InputError, f"prompt must be a string, got {type(prompt).__name__}")
        ids = tok.encode(prompt)
        check(len(ids) > 0, InputError, "prompt is empty: give at least one character")
        if settings.get("seed") is None:
            settings["seed"] = secrets.randbits(32)
        stops, stop_ids = self._stop_ids(stop)
        decoder, text, sent = IncrementalDecoder(tok, ids), "", 0
        for token in self.stream_ids(ids, stop_ids=stop_ids, **settings):
            text += decoder.add([token])
            cut = first_stop(text, stops)
            if cut is not None:
                if cut > sent:
                    yield text[sent:cut]
                return
            ready = len(text) - held_back(text, stops)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        text += decoder.flush()
        cut = first_stop(text, stops)
        end = len(text) if cut is None else cut
        if end > sent:
            yield text[sent:end]

    def _stop_ids(self, stop) -> tuple[list[str], list[list[int]] | None]:
        if stop is None:
            return [], None
        stop = [stop] if isinstance(stop, str) else stop
        check(
            isinstance(stop, (list, tuple)) and all(isinstance(x, str) and x for x in stop),
            InputError,
            "stop must be a non-empty string or a list of non-empty strings",
        )
        tok = self._require_tokenizer()
        ids = [tok._encode_one(x)[1:] if tok.add_bos else tok._encode_one(x) for x in stop]
        return list(stop), ids

    def generate(
        self, prompts: str | Sequence[str], *, stop: str | Sequence[str] | None = None, **settings
    ) -> GenerationResult:
        """Text in, text out. Takes the settings of `generate_ids`; `texts` holds each continuation.

        `stop`: strings that end a row (finish reason "stop"); the text ends before the stop string. They are
        matched on token ids inside the loop and again on the text, so a stop string spelled with other tokens
        than its own encoding is caught too.
        """
        tok = self._require_tokenizer()
        single = isinstance(prompts, str)
        prompts = [prompts] if single else prompts
        check(
            isinstance(prompts, (list, tuple)) and len(prompts) > 0,
            InputError,
            "prompts must be a string or a non-empty list of strings",
        )
        for i, p in enumerate(prompts):
            check(isinstance(p, str), InputError, f"prompt {i} must be a string, got {type(p).__name__}")
        ids = [tok.encode(p) for p in prompts]
        for i, p in enumerate(ids):
            check(len(p) > 0, InputError, f"prompt {i} is empty: give at least one character")
        stops, stop_ids = self._stop_ids(stop)
        result = self.generate_ids(ids, stop_ids=stop_ids, **settings)
        n = settings.get("n", 1)
        texts, token_ids, logprobs, finish = [], [], [], list(result.finish_reasons)
        for r, new_ids in enumerate(result.token_ids):
            prompt_ids = ids[r // n]
            decoder = IncrementalDecoder(tok, prompt_ids)
            pieces = [decoder.add([t]) for t in new_ids]
            pieces[-1:] = [(pieces[-1] if pieces else "") + decoder.flush()]
            text = "".join(pieces)
            cut = first_stop(text, stops)
            keep = len(new_ids)
            if cut is not None:
                text, finish[r] = text[:cut], "stop"
                keep, total = 0, 0
                while keep < len(pieces) and total + len(pieces[keep]) <= cut:
                    total += len(pieces[keep])
                    keep += 1
            texts.append(text)
            token_ids.append(new_ids[:keep])
            logprobs.append(result.logprobs[r][:keep])
        return dataclasses.replace(result, texts=texts, token_ids=token_ids, logprobs=logprobs, finish_reasons=finish)

    # ---- scoring ----------------------------------------------------------------------------------------------
    def _score_traced(self, params, tokens, valid):
        self.trace_count += 1
        logits = forward(self.config, params, tokens, valid)
        logprobs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        target = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
        scored = valid[:, 1:] & valid[:, :-1]
        return jnp.sum(jnp.where(scored, target, 0.0), axis=1), jnp.sum(scored, axis=1)

    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> ScoreResult:
        """Teacher-forced log-likelihood of each sequence's tokens after its first (each at most the context)."""
        check(
            isinstance(sequences, (list, tuple)) and len(sequences) > 0,
            InputError,
            "sequences must be a non-empty list of token-id lists",
        )
        seqs = [self._check_ids(i, s, what="sequence") for i, s in enumerate(sequences)]
        for i, s in enumerate(seqs):
            check(
                len(s) <= self.config.max_seq_len,
                InputError,
                f"sequence {i} has {len(s)} tokens, more than the context of {self.config.max_seq_len}",
            )
        totals, counts = [], []
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            batch = left_pad(
                chunk,
                self.config.pad_id,
                rows=bucket(len(chunk)),
                length=min(bucket(max(map(len, chunk)), MIN_LENGTH_BUCKET), self.config.max_seq_len),
            )
            ll, n = jax.device_get(self._score_jit(self.params, batch.tokens, batch.valid))
            totals += ll[: len(chunk)].tolist()
            counts += n[: len(chunk)].tolist()
        return ScoreResult(log_likelihood=totals, num_tokens=[int(c) for c in counts])

    def score(self, texts: str | Sequence[str], batch_size: int = 8) -> ScoreResult:
        """Teacher-forced log-likelihood of each text (BOS-prefixed as the tokenizer is configured).

        A text longer than the context is scored in consecutive windows, each starting afresh (with BOS when the
        tokenizer adds one); the per-window sums and counts are added up per text.
        """
        tok = self._require_tokenizer()
        texts = [texts] if isinstance(texts, str) else texts
        check(
            isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts) and texts,
            InputError,
            "texts must be a string or a non-empty list of strings",
        )
        windows, owner = [], []
        prefix_len = 1 if tok.add_bos else 0
        step = self.config.max_seq_len - prefix_len
        for i, text in enumerate(texts):
            ids = tok.encode(text)
            prefix, body = ids[:prefix_len], ids[prefix_len:]
            for start in range(0, max(len(body), 1), step):
                window = prefix + body[start : start + step]
                if window:
                    windows.append(window)
                    owner.append(i)
        scored = self.score_ids(windows, batch_size)
        totals, counts = [0.0] * len(texts), [0] * len(texts)
        for i, ll, n in zip(owner, scored.log_likelihood, scored.num_tokens):
            totals[i] += ll
            counts[i] += n
        return ScoreResult(log_likelihood=totals, num_tokens=counts)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _require_tokenizer(self) -> Tokenizer:
        check(
            self.tokenizer is not None,
            TokenizerError,
            "this model was loaded without a tokenizer: use generate_ids/score_ids, or add a tokenizer.model",
        )
        return self.tokenizer
