"""Steps 3 and 4: the decoder-only transformer, token ids -> logits, pure and cache-explicit.

    logits, cache = Transformer(config).apply({"params": params}, tokens, positions, mask, cache, mode=mode)

`mode` (row_invariant.ForwardMode) says what the pass is: a prefill, a decode step or a verification pass.

Axis glossary (the same letters in einsum strings, shapes and comments everywhere):
  B  batch rows                      T  query length (tokens fed this call)
  S  key length (cache slots, or T)  D  model width
  N  query heads                     K  kv heads (N = K * G for grouped-query attention)
  H  head dim                        F  MLP width
  V  vocabulary                      L  layers
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.model.config import ModelConfig
from gpt_jax.model.kv_cache import KVCache, sliding_window_mask, uncached_positions_and_mask
from gpt_jax.model.layers import (
    EMBED,
    MLP,
    POSITION,
    VOCAB,
    Attention,
    Norm,
    WeightInfo,
    init_weight,
    softcap,
    weight,
)
from gpt_jax.model.moe import SparseMoE
from gpt_jax.model.params import flatten
from gpt_jax.model.quantize import contract
from gpt_jax.model.kernels import cpu_products
from gpt_jax.model.row_invariant import ForwardMode, dense_tile, rows_alike


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)); with `post_norms` each branch is normed
    again before its residual add (Gemma 2); with experts the MLP is a sparse mixture of them (Mixtral)."""

    config: ModelConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, mask, cache, mode: ForwardMode):
        cfg = self.config
        attn_out, cache = Attention(cfg, self.layer, name="attn")(
            Norm(cfg, name="attn_norm")(x, mode), positions, mask, cache, mode
        )
        if cfg.post_norms:
            attn_out = Norm(cfg, name="attn_post_norm")(attn_out, mode)
        x = x + attn_out
        mlp = SparseMoE(cfg, name="mlp") if cfg.n_experts else MLP(cfg, name="mlp")
        mlp_out = mlp(Norm(cfg, name="mlp_norm")(x, mode), mode)
        if cfg.post_norms:
            mlp_out = Norm(cfg, name="mlp_post_norm")(mlp_out, mode)
        return x + mlp_out, cache


class Transformer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        cache: KVCache | None = None,
        *,
        mode: ForwardMode,
        last_only: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """tokens, positions: [B, T] int32; mask: [B, T, S] bool (S = T without a cache); mode: what this pass is.

        Returns fp32 logits [B, T, V] ([B, 1, V] for the last position only, with `last_only`: a prompt's prefill
        needs no more, and a batch of prompts' logits at every position can take gigabytes) and the cache with the T
        new keys/values written and its index advanced.
        """
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        embedding = weight(self, "embed", init_weight, (cfg.vocab_size, cfg.d_model), dtype, (VOCAB, EMBED))  # [V, D]
        x = embedding[tokens]  # [B, T, D]
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
        if cfg.position == "learned":
            shape = (cfg.max_seq_len, cfg.d_model)
            x = x + weight(self, "pos_embed", nn.initializers.normal(0.01), shape, dtype, (POSITION, EMBED))[positions]
        # unrolled: per-layer weights are read in place, no per-step slice of a stacked array
        windowed = sliding_window_mask(mask, cfg.sliding_window) if cfg.sliding_window else mask
        for layer in range(cfg.n_layers):
            layer_mask = windowed if cfg.is_sliding(layer) else mask
            x, cache = Block(cfg, layer, name=f"layer_{layer}")(x, positions, layer_mask, cache, mode)
        x = Norm(cfg, name="final_norm")(x, mode)
        if last_only:
            x = x[:, -1:]
        if cfg.tie_embeddings and mode.fixed_order and cpu_products.usable(x, embedding):
            logits = cpu_products.row_product(x, embedding, weight_rows=True)
        elif cfg.tie_embeddings:
            head = lambda x: jnp.einsum("BTD,VD->BTV", x, embedding, preferred_element_type=jnp.float32)
            tile = lambda: dense_tile(*embedding.shape[::-1], x.dtype, transposed=True)
            logits = rows_alike(head, x, mode.row_invariant, tile)
        else:
            head = weight(self, "lm_head", init_weight, (cfg.d_model, cfg.vocab_size), dtype, (EMBED, VOCAB), 1)
            logits = contract("BTD,DV->BTV", x, head, jnp.float32, invariant=mode.row_invariant, kernel=mode.fixed_order)
        logits = softcap(logits, cfg.final_softcap)
        if cache is not None:
            cache = cache.advance(tokens.shape[1])
        return logits, cache


def _init_weights(config: ModelConfig, key: jax.Array) -> dict:
    """Random parameters, each a `WeightInfo` (the array with its declared axes)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(config).init(key, tokens, tokens, jnp.ones((1, 1, 1), bool), mode=ForwardMode.FAST)["params"]


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Random parameters (a plain nested dict) for `config`."""
    return jax.jit(lambda k: nn.meta.unbox(_init_weights(config, k)))(key)


@functools.cache
def weight_infos(config: ModelConfig) -> dict[str, WeightInfo]:
    """Every weight of `config` by flat name, with its shape and dtype (a ShapeDtypeStruct as `value`), its logical
    axes and its contracted input axes; computed without allocating."""
    return flatten(jax.eval_shape(lambda: _init_weights(config, jax.random.key(0))))


def param_shapes(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """The flat names, shapes and dtypes a checkpoint of `config` must hold."""
    return {name: info.value for name, info in weight_infos(config).items()}


def forward(config: ModelConfig, params: dict, tokens: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """An uncached forward pass over whole sequences: tokens [B, T] -> logits [B, T, V], in XLA's own arithmetic
    (ForwardMode.FAST): training differentiates it, and the CPU kernel's products have no gradient.

    `valid` [B, T] marks real tokens (default: all); padding is on the left, and positions count real tokens only.
    """
    t = tokens.shape[1]
    pad_len = jnp.zeros((tokens.shape[0],), jnp.int32) if valid is None else t - jnp.sum(valid, axis=1, dtype=jnp.int32)
    positions, mask = uncached_positions_and_mask(pad_len, t)
    logits, _ = Transformer(config).apply({"params": params}, tokens, positions, mask, mode=ForwardMode.FAST)
    return logits
