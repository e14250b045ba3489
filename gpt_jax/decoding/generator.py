"""The public pipeline: `Generator` composes the nine steps behind `generate`, `generate_ids`, `stream` and `score`.

text -(1 tokenize)-> ids -(2 left-pad)-> batch -(3, 4 model)-> logits -(5, 6 sample)-> token
     -(7 append, 8 stop; in one jitted while_loop)-> ids -(9 detokenize)-> text

Settings and their defaults: `settings.GenerationSettings`; stop strings: `stops.py`; the compiled programs:
`compiled.py`; scoring: `scoring.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax

from gpt_jax.decoding.constraints.automaton import compile_automaton
from gpt_jax.decoding.rows import FINISH_NAMES, MAX_STOP_SEQUENCES, MAX_STOP_TOKENS
from gpt_jax.decoding.memory import check_memory
from gpt_jax.decoding.programs import CompiledPrograms
from gpt_jax.decoding.scoring import ScoreResult, score_batch, windows
from gpt_jax.decoding.prepare import Prepared, check_ids, prepare
from gpt_jax.decoding.settings import GenerationSettings, is_integer, repeat_rows
from gpt_jax.errors import InputError, TokenizerError, check
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.quantize import quantize_params
from gpt_jax.model.transformer import init_params, weight_infos
from gpt_jax.parallel import sharding
from gpt_jax.text.detokenize import IncrementalDecoder
from gpt_jax.text.stops import cut_at_stop, stop_strings, stop_token_ids, stream_text
from gpt_jax.text.tokenizer import BaseTokenizer, check_text

MAX_SCORE_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """One entry per row (prompt x n). token_ids are the generated ids (EOS included when it ended the row).

    A row's tokens and log-probabilities do not depend on its batch-mates, the batch size or speculation: the same
    seed gives the same row, bit for bit, wherever its decode steps are row-invariant (model/row_invariant.py). Not
    covered, so a batch-mate may move a value by rounding (about 1e-6) and, rarely, a sampled draw at a boundary:
    the experts layer (its path depends on the number of (token, expert) pairs), dynamic int8 activations, and,
    where the CPU kernel does not run, the sampler's reductions over the vocabulary (XLA's own) and a prefill
    beside longer prompts (another length bucket). README, "Exact arithmetic", states the same.
    """

    token_ids: list[list[int]]
    finish_reasons: list[str]
    logprobs: list[list[float]]
    seed: int
    steps: int  # decode-loop iterations (prefill's token counts as one)
    texts: list[str] | None = None
    top_logprobs: list[list[list[tuple[int, float]]]] | None = None  # per row, per token: (id, logprob) x k
    # with `speculative`: per row, proposed tokens emitted ("accepted"), tokens proposed, model forward passes
    speculation: dict[str, list[int]] | None = None


def text_settings(settings: dict, defaults: dict) -> GenerationSettings:
    """The settings of a text call: token-id stops belong to `generate_ids`; text calls take `stop` strings."""
    check(
        settings.get("stop_ids") is None,
        InputError,
        "stop_ids is a setting of generate_ids (token-id sequences); give stop strings with stop=[...] here",
    )
    return GenerationSettings.of(settings, defaults).with_seed()


def result_of(out: dict, prep: Prepared) -> GenerationResult:
    """A decode's output arrays (on the host) -> the result of its real rows."""
    rows, lengths = prep.rows, out["lengths"][: prep.rows]
    top = None
    if prep.top_logprobs:
        pairs = lambda r, i: list(zip(out["top_ids"][r, i].tolist(), out["top_logprobs"][r, i].tolist()))
        top = [[pairs(r, i) for i in range(lengths[r])] for r in range(rows)]
    speculation = None
    if "accepted" in out:
        names = ("accepted", "proposed", "passes")
        speculation = {name: out[name][:rows].tolist() for name in names}
    return GenerationResult(
        token_ids=[out["tokens"][r, : lengths[r]].tolist() for r in range(rows)],
        finish_reasons=[FINISH_NAMES[int(f)] for f in out["finish"][:rows]],
        logprobs=[out["logprobs"][r, : lengths[r]].tolist() for r in range(rows)],
        seed=prep.seed,
        steps=int(out["steps"]),
        top_logprobs=top,
        speculation=speculation,
    )


def checked_sequences(config: ModelConfig, sequences, batch_size) -> list[list[int]]:
    """score_ids' arguments checked: 2 to context token ids each, a batch size in [1, MAX_SCORE_BATCH]."""
    check(
        is_integer(batch_size) and 1 <= batch_size <= MAX_SCORE_BATCH,
        InputError,
        f"batch_size must be an integer in [1, {MAX_SCORE_BATCH}], got {batch_size!r}",
    )
    check(
        isinstance(sequences, (list, tuple)) and len(sequences) > 0,
        InputError,
        "sequences must be a non-empty list of token-id lists",
    )
    seqs = [check_ids(config, i, s, what="sequence") for i, s in enumerate(sequences)]
    context = config.max_seq_len
    for i, s in enumerate(seqs):
        check(len(s) >= 2, InputError, f"sequence {i} has {len(s)} token: scoring needs at least 2")
        check(len(s) <= context, InputError, f"sequence {i} has {len(s)} tokens, more than the context of {context}")
    return seqs


def automata_of(config: ModelConfig, tokenizer, prompts, settings: GenerationSettings):
    """Each prompt's constraint compiled over `tokenizer` (cached), or None when the call has none."""
    if not isinstance(prompts, (list, tuple)):
        return None  # prepare refuses it
    constraints = settings.constraints(len(prompts))
    if constraints is None:
        return None
    check(tokenizer is not None, TokenizerError, "constraints need the model's tokenizer (its bytes per id)")
    return [None if c is None else compile_automaton(c.regex, tokenizer, config.eos_ids) for c in constraints]


class Generator:
    """A model (config + params) with its tokenizer and the compiled programs of the pipeline; every generation call
    takes the settings of `settings.GenerationSettings` as keyword arguments."""

    def __init__(
        self,
        config: ModelConfig,
        params: dict,
        tokenizer: BaseTokenizer | None = None,
        mesh=None,
        defaults=None,
        arithmetic: str = "exact",
    ):
        """`mesh`: a jax.sharding.Mesh with axes ("data", "model"), Auto or Explicit; params are placed by the
        `sharding` rules. `defaults`: the checkpoint's own settings ({name: value}), used where a call sets none.
        `arithmetic`: "exact" (a row's tokens never depend on its batch-mates, the batch size or speculation) or
        "fast" (XLA's own arithmetic, no such promise: on XLA:CPU exact's own product kernel is about as fast, see
        README, "Speed"; elsewhere fast may be faster); it holds for every call and every program of this Generator:
        generate, stream, speculation and the server alike."""
        if mesh is not None:
            mesh = sharding.auto_axes(mesh)
            params = sharding.shard_params(config, params, mesh)
        self.config, self.params, self.tokenizer, self.mesh = config, params, tokenizer, mesh
        self.defaults = dict(defaults or {})
        GenerationSettings.of(self.defaults)  # an unknown name is refused here, not at the first call
        self.programs = CompiledPrograms(config, mesh, arithmetic)

    @property
    def arithmetic(self) -> str:
        return self.programs.arithmetic

    def with_arithmetic(self, arithmetic: str) -> Generator:
        """This model (same weights, tokenizer and mesh) with the other arithmetic; `self` itself when it has it."""
        if arithmetic == self.arithmetic:
            return self
        return Generator(self.config, self.params, self.tokenizer, self.mesh, self.defaults, arithmetic)

    @property
    def trace_count(self) -> int:
        """How many programs were traced (compiled) so far."""
        return self.programs.trace_count

    @classmethod
    def from_config(
        cls, config: ModelConfig, tokenizer: BaseTokenizer | None = None, key: jax.Array | int = 0, mesh=None
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
        inputs = {name: info.inputs for name, info in weight_infos(self.config).items()}
        params = jax.jit(lambda p: quantize_params(p, inputs, activations))(self.params)
        return Generator(self.config, params, self.tokenizer, self.mesh, self.defaults, self.arithmetic)

    def prepare(self, prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> Prepared:
        """Checked settings -> the traced inputs of one decode (the batch padded to the mesh's data axis); a decode
        that cannot fit in memory is refused here, not by an out-of-memory error halfway through."""
        automata = automata_of(self.config, self.tokenizer, prompts, settings)
        prep = prepare(self.config, prompts, settings, self._data_axis(), automata=automata)
        if settings.speculative is not None:
            settings.speculative.check_target(self.config, self.tokenizer)
        check_memory(self.config, *prep.inputs.tokens.shape, prep.buffer, self.mesh)
        return prep

    # ---- ids in, ids out ---------------------------------------------------------------------------------------
    def generate_ids(self, prompts: Sequence[Sequence[int]], **settings) -> GenerationResult:
        """Token ids in, generated token ids out (no tokenizer involved); `stop_ids` for token-level stops.

        Row r samples its t-th token with key fold_in(fold_in(key(seed), row_seeds[r]), t).
        """
        s = GenerationSettings.of(settings, self.defaults)
        check(s.stop is None, InputError, "stop strings need text prompts: use generate/stream, or give stop_ids")
        return self._generate_ids(prompts, s)

    def _generate_ids(self, prompts, s: GenerationSettings) -> GenerationResult:
        prep = self.prepare(prompts, s)
        return result_of(jax.device_get(self.programs.run(self.params, prep, s.speculative)), prep)

    def stream_ids(self, prompt: Sequence[int], **settings) -> Iterator[int]:
        """Yield one prompt's generated ids as they are chosen: the decode step runs from a Python loop.

        Same settings, keys and compiled step as `generate_ids`, so the ids are those `generate_ids` returns.
        Settings are checked here, before the first id is asked for.
        """
        s = GenerationSettings.of(settings, self.defaults)
        check(s.stop is None, InputError, "stop strings need a text prompt: use stream, or give stop_ids")
        return self._stream_ids(self._prepare_stream([prompt], s), s.speculative)

    def _prepare_stream(self, prompts, s: GenerationSettings) -> Prepared:
        check(s.n == 1, InputError, f"a stream yields one sample: n must be 1, got {s.n!r} (use generate for n > 1)")
        check(s.top_logprobs == 0, InputError, "a stream yields text or ids only: top_logprobs needs generate")
        return self.prepare(prompts, s)

    def _stream_ids(self, prep: Prepared, proposer=None) -> Iterator[int]:
        inputs, sent = jax.device_put(prep.inputs), 0  # inputs once, not at every step
        state = self.programs.stream_start(self.params, inputs, prep.buffer, proposer)
        while True:  # a speculative step may add several tokens
            state, view = self.programs.stream_step(self.params, state, inputs, proposer)
            tokens, length, done = jax.device_get(view)
            yield from (int(t) for t in tokens[sent:length])
            sent = length
            if done:
                return

    # ---- text in, text out -------------------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], **settings) -> GenerationResult:
        """Text in, text out; `texts` holds each continuation.

        `stop`: strings that end a row (finish reason "stop"); the text ends before the stop string.
        """
        prompts = [prompts] if isinstance(prompts, str) else prompts
        check(
            isinstance(prompts, (list, tuple)) and len(prompts) > 0,
            InputError,
            "prompts must be a string or a non-empty list of strings",
        )
        s = text_settings(settings, self.defaults)
        return self._generate_text([self._encode_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)], s)

    def chat(self, conversations, **settings) -> GenerationResult:
        """One conversation ([{"role": "user", "content": ...}, ...]) or a list of them -> the assistant's replies
        in `texts`, through the checkpoint's chat template (its special tokens kept as tokens). Settings as
        `generate`; the turn ends at the model's EOS ids (generation_config.json's end-of-turn ids included)."""
        tok = self._require_tokenizer()
        single = (
            isinstance(conversations, (list, tuple)) and len(conversations) > 0 and isinstance(conversations[0], dict)
        )
        conversations = [conversations] if single else conversations
        check(
            isinstance(conversations, (list, tuple)) and len(conversations) > 0,
            InputError,
            "conversations must be a list of messages, or a non-empty list of such lists",
        )
        s = text_settings(settings, self.defaults)
        ids = [tok.apply_chat_template(c) for c in conversations]
        return self._generate_text(ids, s)

    def _generate_text(self, ids: list[list[int]], s: GenerationSettings) -> GenerationResult:
        tok = self._require_tokenizer()
        stops = stop_strings(s.stop)
        result = self._generate_ids(ids, self._with_stop_ids(s, stops))
        texts, token_ids, logprobs, finish = [], [], [], list(result.finish_reasons)
        top = None if result.top_logprobs is None else []
        for r, (prompt_ids, new_ids) in enumerate(zip(repeat_rows(ids, s.n), result.token_ids)):
            text, keep, stopped = cut_at_stop(IncrementalDecoder(tok, prompt_ids).decode_all(new_ids), stops)
            finish[r] = "stop" if stopped else finish[r]
            texts.append(text)
            token_ids.append(new_ids[:keep])
            logprobs.append(result.logprobs[r][:keep])
            if top is not None:
                top.append(result.top_logprobs[r][:keep])
        cut = {"token_ids": token_ids, "logprobs": logprobs, "top_logprobs": top, "finish_reasons": finish}
        return dataclasses.replace(result, texts=texts, **cut)

    def stream(self, prompt: str, **settings) -> Iterator[str]:
        """The continuation of one text prompt, piece by piece; pieces never split a UTF-8 character.

        The pieces concatenate to `generate(prompt, **settings).texts[0]` for the same seed. Text that could be the
        start of a stop string is held back until it is known not to be one. Settings are checked here.
        """
        tok = self._require_tokenizer()
        s = text_settings(settings, self.defaults)
        ids = self._encode_prompt(prompt, "prompt")
        stops = stop_strings(s.stop)
        prep = self._prepare_stream([ids], self._with_stop_ids(s, stops))
        return stream_text(IncrementalDecoder(tok, ids), self._stream_ids(prep, s.speculative), stops)

    def _with_stop_ids(self, s: GenerationSettings, stops: list[str]) -> GenerationSettings:
        """Text stop strings added to the token-level stops (their own encodings) of the compiled loop."""
        if not stops:
            return dataclasses.replace(s, stop=None)
        check(
            s.stop_ids is None or isinstance(s.stop_ids, (list, tuple)),
            InputError,
            f"stop_ids must be a list of token-id lists, got {type(s.stop_ids).__name__}",
        )
        given = list(s.stop_ids or [])
        in_loop = stop_token_ids(self.tokenizer, stops, MAX_STOP_SEQUENCES - len(given), MAX_STOP_TOKENS)
        return dataclasses.replace(s, stop=None, stop_ids=given + in_loop)

    def _encode_prompt(self, prompt, what: str) -> list[int]:
        ids = self._require_tokenizer().encode(check_text(prompt, what))
        check(len(ids) > 0, InputError, f"{what} is empty: give at least one character")
        return ids

    # ---- scoring -----------------------------------------------------------------------------------------------
    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> ScoreResult:
        """Teacher-forced log-likelihood of each sequence's tokens after its first (each 2 .. context tokens)."""
        seqs, context = checked_sequences(self.config, sequences, batch_size), self.config.max_seq_len
        totals, counts, each = [], [], []
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            batch = score_batch(chunk, self.config.pad_id, context, self._data_axis())
            ll, n, target, scored = jax.device_get(self.programs.score(self.params, batch.tokens, batch.valid))
            totals += ll[: len(chunk)].tolist()
            counts += n[: len(chunk)].tolist()
            each += [row[mask].tolist() for row, mask in zip(target[: len(chunk)], scored)]
        return ScoreResult(log_likelihood=totals, num_tokens=[int(c) for c in counts], token_logprobs=each)

    def score(self, texts: str | Sequence[str], batch_size: int = 8) -> ScoreResult:
        """Teacher-forced log-likelihood of each text (BOS-prefixed as the tokenizer is configured); a text longer
        than the context is scored in windows (see scoring.py)."""
        tok = self._require_tokenizer()
        texts = [texts] if isinstance(texts, str) else texts
        check(
            isinstance(texts, (list, tuple)) and len(texts) > 0,
            InputError,
            "texts must be a string or a non-empty list of strings",
        )
        prefix_len = 1 if tok.add_bos else 0
        parts, owner = [], []
        for i, text in enumerate(texts):
            ids = tok.encode(check_text(text, f"text {i}"))
            check(len(ids) >= 2, InputError, f"text {i} is {len(ids)} token long: scoring needs at least 2 tokens")
            for w in windows(ids, prefix_len, self.config.max_seq_len):
                if len(w) >= 2:  # a last window of BOS + 0 tokens scores nothing
                    parts.append(w)
                    owner.append(i)
        scored = self.score_ids(parts, batch_size)
        totals, counts, each = [0.0] * len(texts), [0] * len(texts), [[] for _ in texts]
        for i, ll, n, values in zip(owner, scored.log_likelihood, scored.num_tokens, scored.token_logprobs):
            totals[i] += ll
            counts[i] += n
            each[i] += values
        return ScoreResult(log_likelihood=totals, num_tokens=counts, token_logprobs=each)

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _data_axis(self) -> int:
        return self.mesh.shape["data"] if self.mesh is not None else 1

    def _require_tokenizer(self) -> BaseTokenizer:
        check(
            self.tokenizer is not None,
            TokenizerError,
            "this model was loaded without a tokenizer: use generate_ids/score_ids, or add a tokenizer.model",
        )
        return self.tokenizer
