"""Logit processing before the sampler (order, as in vLLM: bias -> penalties -> temperature -> ...).

Conventions, per row:
- logit bias: a value added to chosen token ids' logits (OpenAI's `logit_bias`).
- repetition penalty (transformers / vLLM): for every token that appears in the prompt or the output so far, a
  positive logit is divided by the penalty and a negative one multiplied by it; 1 is off.
- presence and frequency penalties (OpenAI / vLLM): over the generated tokens only,
  logit -= presence * (count > 0) + frequency * count; 0 is off.
- min_new_tokens: the EOS ids are masked until that many tokens have been generated.

Axes: B batch, V vocabulary, E eos ids.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.decoding.sampling import fill_rows, sanitize
from gpt_jax.model.numerics import MASK_VALUE


@flax.struct.dataclass
class Penalties:
    repetition: jax.Array  # [B]
    presence: jax.Array  # [B]
    frequency: jax.Array  # [B]
    bias: jax.Array  # [B, V]
    min_new_tokens: jax.Array  # [B]

    @classmethod
    def make(
        cls,
        rows: int,
        vocab: int,
        *,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        logit_bias=None,
        min_new_tokens=0,
    ) -> Penalties:
        """Scalars broadcast; lists give one value per row (filler rows copy the last). logit_bias: one dict for
        every row or one dict per row, {token id: value}."""

        bias = np.zeros((rows, vocab), np.float32)
        if logit_bias:
            dicts = logit_bias if isinstance(logit_bias, (list, tuple)) else [logit_bias]
            for r in range(rows):
                for token, value in dicts[min(r, len(dicts) - 1)].items():
                    bias[r, int(token)] = value
        return cls(
            repetition=fill_rows(repetition_penalty, rows, np.float32),
            presence=fill_rows(presence_penalty, rows, np.float32),
            frequency=fill_rows(frequency_penalty, rows, np.float32),
            bias=bias,
            min_new_tokens=fill_rows(min_new_tokens, rows, np.int32),
        )


def seen_in_prompt(tokens: jax.Array, pad_len: jax.Array, vocab: int) -> jax.Array:
    """[B, T] left-padded prompts -> [B, V] bool, True for ids that occur among each row's real tokens."""
    b, t = tokens.shape
    real = jnp.arange(t)[None, :] >= pad_len[:, None]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
    return jnp.zeros((b, vocab), bool).at[rows, tokens].max(real)


def apply(
    logits: jax.Array, pen: Penalties, prompt_seen: jax.Array, counts: jax.Array, step: jax.Array, eos_ids: jax.Array
) -> jax.Array:
    """[B, V] raw logits -> processed logits. counts: [B, V] generated-token counts; step: tokens generated so far."""
    x = sanitize(logits) + pen.bias
    seen = prompt_seen | (counts > 0)
    rep = pen.repetition[:, None]
    x = jnp.where(seen, jnp.where(x > 0, x / rep, x * rep), x)
    x = x - pen.frequency[:, None] * counts - pen.presence[:, None] * (counts > 0)
    vocab = jnp.arange(x.shape[-1])
    is_eos = jnp.any(vocab[None, :] == eos_ids[:, None], axis=0)  # [V]
    too_early = step < pen.min_new_tokens  # [B]
    return jnp.where(is_eos[None, :] & too_early[:, None], MASK_VALUE, x)
