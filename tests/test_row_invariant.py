"""A row's values never depend on how many rows or positions are computed with it (row_invariant).

Three levels: the summation order itself; the kernel classes the products rely on, for the models' real shapes on
this machine's backend; and the model: a row's logits from a decode step are bit-identical at any batch size and
as any position of a speculative verification pass. The last test is the end-to-end case that used to differ: a
random GPT-2-small model (near-flat distributions) sampled with top-p, where one rounding step changes the draw.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
from gpt_jax.decoding import loop
from gpt_jax.decoding.batching import bucket
from gpt_jax.bench.reference import Reference
from gpt_jax.model.kernels import cpu_products
from gpt_jax.model.presets import PRESETS
from gpt_jax.model.row_invariant import (
    GROUP_TILES,
    MAX_ROW_TILE,
    ForwardMode,
    dense_tile,
    row_sum,
    rows_alike,
    softmax,
    tiled,
)

RNG = np.random.default_rng(0)


def normal(*shape, scale=1.0):
    return jnp.asarray(RNG.standard_normal(shape).astype(np.float32) * scale)


def test_row_sum_is_a_sum_in_one_order_for_every_row_count_and_padding():
    x = normal(40, 1000)
    np.testing.assert_allclose(row_sum(x), np.asarray(x, np.float64).sum(-1), rtol=1e-5, atol=1e-4)
    one = np.asarray(jax.jit(row_sum)(x[:1]))[0]
    for rows in (2, 3, 6, 17, 40):
        assert np.asarray(jax.jit(row_sum)(x[:rows]))[0] == one
    padded = jnp.concatenate([x[:1], jnp.zeros((1, 1048))], axis=-1)  # a longer cache: zeros beyond the row
    assert np.asarray(jax.jit(row_sum)(padded))[0] == one
    probs = softmax(x[:3])
    np.testing.assert_allclose(probs, jax.nn.softmax(x[:3], axis=-1), rtol=1e-5, atol=1e-7)


def product_shapes():
    """(contracted, output) widths of every decode-step product of the GPT-2 and Llama presets."""
    shapes = set()
    for name in ("gpt2-small", "llama-small"):
        c = PRESETS[name]
        kv = c.n_kv_heads * c.head_dim
        shapes |= {(c.d_model, c.n_heads * c.head_dim), (c.d_model, kv), (c.n_heads * c.head_dim, c.d_model)}
        shapes |= {(c.d_model, c.mlp_dim), (c.mlp_dim, c.d_model), (c.d_model, c.vocab_size)}
    return sorted(shapes)


@pytest.mark.parametrize("width_in,width_out", product_shapes())
def test_products_round_each_row_alike_for_any_row_count(width_in, width_out):
    tile = dense_tile(width_in, width_out, jnp.float32)
    w = normal(width_in, width_out, scale=0.02)
    x = normal(2 * tile + 3, 1, width_in)
    # every row count up to the tile, each its own product (as in a model), in one program
    every = jax.jit(lambda x, w: [jnp.einsum("BTI,IO->BTO", x[:m], w)[0] for m in range(2, tile + 1)])
    rows = np.asarray(every(x, w))
    assert [m for m, r in zip(range(2, tile + 1), rows) if not np.array_equal(r, rows[0])] == []
    product = jax.jit(lambda x, w: rows_alike(lambda x: jnp.einsum("BTI,IO->BTO", x, w), x, True, tile))
    row = np.asarray(product(x[:1], w))[0]
    assert np.array_equal(row, rows[0])
    differs = [n for n in (tile + 1, 2 * tile + 3) if not np.array_equal(product(x[:n], w)[0], row)]
    assert differs == []
    positions = x[:9, 0][None]  # one row's 9 positions: a verification pass
    assert np.array_equal(np.asarray(product(positions, w))[0, 0], row[0])


@pytest.mark.parametrize("slots", [176, 1040])
def test_attention_products_round_each_query_alike(slots):
    keys, values = normal(12, 64, slots), normal(12, slots, 64)
    q, probs = normal(12, 72, 64), jnp.asarray(RNG.random((12, 72, slots)).astype(np.float32))
    scores = jax.jit(lambda q: tiled(lambda q: jnp.einsum("RQH,RHS->RQS", q, keys), q, 1))
    mixed = jax.jit(lambda p: tiled(lambda p: jnp.einsum("RQS,RSH->RQH", p, values), p, 1))
    s1, m1 = np.asarray(scores(q[:, :1]))[:, 0], np.asarray(mixed(probs[:, :1]))[:, 0]
    for queries in (2, 40, 72):
        assert np.array_equal(np.asarray(scores(q[:, :queries]))[:, 0], s1)
        assert np.array_equal(np.asarray(mixed(probs[:, :queries]))[:, 0], m1)


feed = jax.jit(loop.feed, static_argnums=(0, 5))


def decode_logits(gen, cache, tokens, index):
    """Logits [B, T, V] of feeding tokens [B, T] at slot `index` of every row (prompt slots 0..index-1): a decode
    step for T = 1, a verification pass otherwise."""
    mode = ForwardMode.DECODE if tokens.shape[1] == 1 else ForwardMode.VERIFY
    pad = jnp.zeros((tokens.shape[0],), jnp.int32)
    logits, _ = feed(gen.programs.logits_fn, gen.params, tokens, pad, cache.replace(index=index), mode)
    return np.asarray(logits)


def prefilled(gen, prompt, rows, length=96):
    """A cache of `rows` copies of `prompt`'s prefill (every row holds the same keys and values)."""
    cache, pad = gen.programs.new_cache(1, length), jnp.zeros((1,), jnp.int32)
    tokens = jnp.asarray([prompt], jnp.int32)
    _, cache = feed(gen.programs.logits_fn, gen.params, tokens, pad, cache, ForwardMode.PREFILL)
    return jax.tree.map(lambda a: jnp.concatenate([a] * rows, axis=0) if a.ndim else a, cache)  # [B*K, ...] rows


def decode_chain(gen, prompt, fed, steps):
    """Row 0's logits of plain decoding at batch 1, one token of fed[0] per pass: [steps, V]."""
    chain, cache, pad = [], prefilled(gen, prompt, 1), jnp.zeros((1,), jnp.int32)
    for j in range(steps):
        token = jnp.asarray(fed[:1, j : j + 1])
        logits, cache = feed(gen.programs.logits_fn, gen.params, token, pad, cache, ForwardMode.DECODE)
        chain.append(np.asarray(logits)[0, 0])
    return chain


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2-small", "llama-small"])
def test_a_rows_decode_logits_are_the_same_at_any_batch_size_and_any_position_count(preset):
    config = dataclasses.replace(PRESETS[preset], n_layers=2)
    gen = gpt_jax.Generator.from_config(config, key=1)
    prompt = RNG.integers(3, 1000, 24).tolist()
    fed = RNG.integers(3, 1000, (2048, 17)).astype(np.int32)  # row 0: the token after the prompt, 16 proposals
    chain = decode_chain(gen, prompt, fed, 17)
    for rows in (5, 20, 256, 2048):  # batch-mates fed other tokens
        assert np.array_equal(
            decode_logits(gen, prefilled(gen, prompt, rows), jnp.asarray(fed[:rows, :1]), 24)[0, 0], chain[0]
        )
    for rows, width in ((1, 9), (3, 9), (1, 17), (20, 17)):  # verification passes, k up to 16
        wide = decode_logits(gen, prefilled(gen, prompt, rows), jnp.asarray(fed[:rows, :width]), 24)
        for j in range(width):
            assert np.array_equal(wide[0, j], chain[j]), (rows, width, j)


@pytest.mark.parametrize("preset", ["llama-small", "gpt2-small"])
def test_a_rows_decode_logits_do_not_depend_on_the_cache_length(preset):
    """The cache's length (a generate call's prompt bucket plus its budget; a serving dispatch's attended bucket)
    only adds masked slots: XLA:CPU's query-key product switches kernels past 512 key columns (measured, with more
    than one query row: grouped-query attention, or a verification pass), so keys are multiplied in blocks."""
    config = dataclasses.replace(PRESETS[preset], n_layers=1, max_seq_len=2600)
    gen = gpt_jax.Generator.from_config(config, key=3)
    prompt = RNG.integers(3, 1000, 40).tolist()
    fed = jnp.asarray(RNG.integers(3, 1000, (3, 5)).astype(np.int32))
    steps, passes = {}, {}
    for length in (96, 600, 2600):  # one product; one block and a part; five blocks in the loop and a part
        steps[length] = decode_logits(gen, prefilled(gen, prompt, 3, length), fed[:, :1], 40)
        passes[length] = decode_logits(gen, prefilled(gen, prompt, 3, length), fed, 40)
    assert [n for n in steps if not np.array_equal(steps[n], steps[96])] == []
    assert [n for n in passes if not np.array_equal(passes[n], passes[96])] == []


VARIANTS = {  # the experts layer (k = 3: the order its chosen experts are summed in matters) and int8
    "experts": lambda gen: gen,
    "int8": lambda gen: gen.quantize_int8(),
    "int8 activations": lambda gen: gen.quantize_int8(activations=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_experts_and_int8_keep_a_rows_decode_logits_at_any_batch_size_and_position_count(variant):
    config = dataclasses.replace(PRESETS["llama-small"], n_layers=1, mlp_dim=512)
    if variant == "experts":
        config = dataclasses.replace(config, n_experts=8, experts_per_token=3)
    gen = VARIANTS[variant](gpt_jax.Generator.from_config(config, key=2))
    prompt = RNG.integers(3, 1000, 20).tolist()
    fed = RNG.integers(3, 1000, (256, 5)).astype(np.int32)
    chain = decode_chain(gen, prompt, fed, 5)
    for rows in (2, 5, 20, 256):  # rows * 3 chosen experts below and above the 8 experts: both paths
        one = decode_logits(gen, prefilled(gen, prompt, rows), jnp.asarray(fed[:rows, :1]), 20)
        assert np.array_equal(one[0, 0], chain[0]), rows
    for rows in (1, 6):  # a k = 4 verification pass
        wide = decode_logits(gen, prefilled(gen, prompt, rows), jnp.asarray(fed[:rows, :5]), 20)
        assert [j for j in range(5) if not np.array_equal(wide[0, j], chain[j])] == [], rows


@pytest.mark.slow
def test_near_flat_sampling_is_unchanged_by_batch_mates_and_speculation():
    """Random GPT-2-small at temperature 0.8 / top-p 0.95 draws from ~47k nearly equal probabilities: seed 3 changed
    its 70th token when its logits were rounded differently (batch 2, or a 3-, 5- or 9-position verification)."""
    gen = gpt_jax.Generator.from_config(PRESETS["gpt2-small"], key=0)
    prompt = np.random.default_rng(0).integers(3, 1000, 32).tolist()
    settings = dict(max_new_tokens=80, temperature=0.8, top_p=0.95, seed=3, ignore_eos=True)
    plain = gen.generate_ids([prompt], **settings).token_ids[0]
    assert gen.generate_ids([prompt, prompt[:20]], **settings).token_ids[0] == plain
    reference = np.zeros((bucket(1), 80), np.int32)
    reference[0] = plain
    out = gen.generate_ids([prompt], speculative=Reference(reference, 8, 1.0, seed=1), **settings)  # 9 positions
    assert out.token_ids[0] == plain
    assert sum(out.speculation["passes"]) < 80  # the proposals were used, not only one-token passes


@pytest.mark.skipif(not cpu_products.enabled(), reason="an exact prefill needs the CPU kernel (XLA:CPU, one device)")
@pytest.mark.parametrize("preset", ["bundled", "llama-small"])
def test_a_rows_prefill_does_not_depend_on_its_batch_mates_lengths(preset):
    """The case that used to differ: a 7-token prompt alone is prefilled in the 16-position bucket, beside prompts
    of up to 30 tokens in the 32-position one (more left padding, another row count, a longer cache). Its sampled
    tokens, log-probabilities and alternatives are now the same bits at batch 1, 7, 40 and 300."""
    if preset == "bundled":
        gen = gpt_jax.load()
    else:
        gen = gpt_jax.Generator.from_config(dataclasses.replace(PRESETS[preset], n_layers=2), key=2)
    rng = np.random.default_rng(5)
    prompt = rng.integers(4, 1000, 7).tolist()
    settings = dict(max_new_tokens=6, temperature=1.0, top_p=0.95, seed=11, top_logprobs=2, ignore_eos=True)
    alone = gen.generate_ids([prompt], **settings)
    for rows in (7, 40, 300):
        mates = [rng.integers(4, 1000, rng.integers(8, 31)).tolist() for _ in range(rows - 1)]
        together = gen.generate_ids([prompt, *mates], **settings)  # row 0 both times: its draws use its row's key
        assert together.token_ids[0] == alone.token_ids[0], rows
        assert together.logprobs[0] == alone.logprobs[0], rows
        assert together.top_logprobs[0] == alone.top_logprobs[0], rows


@pytest.mark.parametrize("width_in,width_out,transposed", [(960, 2560, False), (896, 4864, False), (992, 512, True)])
def test_each_shapes_tile_is_measured_so_widths_with_an_early_kernel_switch_stay_row_invariant(
    width_in, width_out, transposed
):
    """XLA:CPU switches kernels at a row count that depends on the contracted width (measured: after 16 rows at
    768, 9 at 896, 4 at 960, 2 at 992): each product shape gets its own measured tile."""
    tile = dense_tile(width_in, width_out, jnp.float32, transposed)
    assert 2 <= tile <= MAX_ROW_TILE
    w = normal(width_out, width_in, scale=0.02) if transposed else normal(width_in, width_out, scale=0.02)
    spec = "BTI,OI->BTO" if transposed else "BTI,IO->BTO"
    x = normal(40, 1, width_in)
    product = jax.jit(lambda x, w: rows_alike(lambda x: jnp.einsum(spec, x, w), x, True, tile))  # w a parameter
    row = np.asarray(product(x[:1], w))[0]
    assert [n for n in (2, tile, tile + 1, 2 * tile + 1, 40) if not np.array_equal(product(x[:n], w)[0], row)] == []


def test_large_batches_loop_over_groups_of_tiles_and_keep_each_row():
    """Past 2 * GROUP_TILES tiles the tiles run in a loop (the program stops growing); rows stay as at batch 1,
    in the loop and in the unrolled tiles after it."""
    w = normal(768, 256, scale=0.02)
    tile = dense_tile(768, 256, jnp.float32)
    rows = 2 * GROUP_TILES * tile + tile + 3  # two groups in the loop, a full tile and a short one after it
    x = normal(rows, 1, 768)
    product = jax.jit(lambda x: rows_alike(lambda x: jnp.einsum("BTI,IO->BTO", x, w), x, True, tile))
    whole = np.asarray(product(x))
    alone = np.concatenate([np.asarray(product(x[i : i + 1])) for i in (0, GROUP_TILES * tile + 5, rows - 1)])
    assert np.array_equal(whole[[0, GROUP_TILES * tile + 5, rows - 1]], alone)
    hlo = product.lower(x).compile().as_text()
    assert "while" in hlo


def test_the_arithmetic_is_the_generators_and_fast_is_xlas_own_within_rounding():
    gen = gpt_jax.Generator.from_config(dataclasses.replace(PRESETS["gpt2-tiny"], n_layers=1), key=0)
    fast = gen.with_arithmetic("fast")
    assert (gen.arithmetic, fast.arithmetic, fast.with_arithmetic("fast") is fast) == ("exact", "fast", True)
    assert fast.quantize_int8().arithmetic == "fast"
    prompt = RNG.integers(3, 60, 12).tolist()
    exact_logits = decode_logits(gen, prefilled(gen, prompt, 3), jnp.asarray([[5], [6], [7]]), 12)
    fast_logits = decode_logits(fast, prefilled(fast, prompt, 3), jnp.asarray([[5], [6], [7]]), 12)
    np.testing.assert_allclose(fast_logits, exact_logits, rtol=1e-4, atol=1e-5)
    settings = dict(max_new_tokens=6, temperature=0.0, seed=0, ignore_eos=True)
    assert len(fast.generate_ids([prompt, prompt[:5]], **settings).token_ids[1]) == 6
    with pytest.raises(gpt_jax.InputError, match="arithmetic must be one of 'exact', 'fast', got 'fastest'"):
        gen.with_arithmetic("fastest")


def test_the_benchmarks_identity_check_reports_exact_as_bit_identical():
    from gpt_jax.bench.invariance import identity

    gen = gpt_jax.Generator.from_config(dataclasses.replace(PRESETS["gpt2-tiny"], n_layers=1), key=2)
    report = identity(gen, batches=(1, 5, 20))
    assert report["bit_identical"] and set(report["max_abs_difference_by_batch"]) == {1, 5, 20}
    fast = identity(gen.with_arithmetic("fast"), batches=(1, 5, 20))
    assert fast["arithmetic"] == "fast" and fast["max_abs_difference_verify_k4"] < 1e-4
