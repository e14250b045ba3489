"""Teacher-forced log-likelihood: how probable the model finds a given text, token by token.

`token_logprobs` is the one computation, shared by `Generator.score` and training's loss. A text longer than the
context is scored in consecutive windows, each starting afresh (with BOS when the tokenizer adds one); the per-window
sums and counts are added up per text.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gpt_jax.decoding.batching import MIN_LENGTH_BUCKET, Batch, bucket, left_pad
from gpt_jax.model.config import ModelConfig
from gpt_jax.model.transformer import forward


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Per text: total log-likelihood (nats) of its scored tokens, how many were scored, and each one's
    log-probability in order (`score_ids`: tokens 2..L of each sequence)."""

    log_likelihood: list[float]
    num_tokens: list[int]
    token_logprobs: list[list[float]]

    @property
    def perplexity(self) -> float:
        """exp(mean negative log-likelihood per token); needs at least one scored token."""
        return math.exp(-sum(self.log_likelihood) / sum(self.num_tokens))


def token_logprobs(config: ModelConfig, params: dict, tokens: jax.Array, valid: jax.Array | None = None):
    """[B, T] left-padded sequences (`valid` marks real tokens; default all) -> ([B, T-1] log p(token t+1 | tokens
    up to t), [B, T-1] mask of scored positions: the token and the one before it are both real)."""
    logits = forward(config, params, tokens, valid)
    logprobs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    target = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
    if valid is None:
        return target, jnp.ones(target.shape, bool)
    return target, valid[:, 1:] & valid[:, :-1]


def sequence_log_likelihood(config: ModelConfig, params: dict, tokens: jax.Array, valid: jax.Array):
    """[B, T] -> ([B] summed log-likelihood of each row's scored tokens, [B] how many were scored, [B, T-1] each
    token's log-probability, [B, T-1] which of them were scored)."""
    target, scored = token_logprobs(config, params, tokens, valid)
    return jnp.sum(jnp.where(scored, target, 0.0), axis=1), jnp.sum(scored, axis=1), target, scored


def windows(ids: list[int], prefix_len: int, context: int) -> list[list[int]]:
    """One text's ids (the first `prefix_len` of them a BOS prefix) -> windows of at most `context` ids, each
    starting with the prefix."""
    prefix, body = ids[:prefix_len], ids[prefix_len:]
    step = context - prefix_len
    out = [prefix + body[start : start + step] for start in range(0, max(len(body), 1), step)]
    return [w for w in out if w]


def score_batch(sequences: list[list[int]], pad_id: int, context: int, data_axis: int = 1) -> Batch:
    """Sequences -> one left-padded batch: length bucketed (at most the context), rows bucketed and a multiple of
    the mesh's data axis."""
    length = min(bucket(max(map(len, sequences)), MIN_LENGTH_BUCKET), context)
    rows = -(-bucket(len(sequences)) // data_axis) * data_axis
    return left_pad(sequences, pad_id, rows=rows, length=length)
