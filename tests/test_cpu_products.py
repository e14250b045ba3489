"""The CPU product kernel (gpt_jax/model/kernels): a row's values at any row count, on any build, and close to the
exact product; its use in decode steps and its fallback."""

import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
from gpt_jax.decoding import loop
from gpt_jax.model.kernels import cpu_products
from gpt_jax.model.row_invariant import ForwardMode

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel")

# contracted width, output width: the presets' products and ragged ones (not whole vectors, not whole units)
SHAPES = [(768, 2304), (3072, 768), (256, 50), (771, 130), (13, 7), (1, 33)]
ROW_COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 13, 16, 17, 64, 255, 384, 385, 700]  # past 384: several panels
feed = jax.jit(loop.feed, static_argnums=(0, 5))


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The kernel built for this machine, for AVX2 (x86-64-v3) and for plain x86-64, registered side by side."""
    if not cpu_products.enabled():
        pytest.fail("the CPU kernel is not enabled in the test process (it is the default on one CPU device)")
    directory = tmp_path_factory.mktemp("kernels")
    prefixes = {"native": None}
    if platform.machine() in ("x86_64", "AMD64"):
        for march, tag in (("x86-64-v3", "avx2"), ("x86-64", "plain")):
            prefixes[tag] = cpu_products.register(cpu_products.build(march, directory), f"test_{tag}")
    return prefixes


def _values(shape, rows=800, seed=0):
    k, n = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k), dtype=np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("weight_rows", [False, True], ids=["w[K,N]", "w[N,K]"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_a_rows_values_do_not_depend_on_the_row_count_or_the_build(builds, shape, weight_rows):
    x, w = _values(shape)
    w_arg = np.ascontiguousarray(w.T) if weight_rows else w
    reference = x.astype(np.float64) @ w.astype(np.float64)
    results = {}
    for tag, prefix in builds.items():
        product = jax.jit(lambda x, w: cpu_products.row_product(x, w, weight_rows, prefix))
        full = np.asarray(product(x, w_arg))
        for m in ROW_COUNTS:
            np.testing.assert_array_equal(np.asarray(product(x[:m], w_arg)), full[:m], err_msg=f"{tag}, {m} rows")
        # every row alone, offset in the batch: row 37 alone equals row 37 of 800
        np.testing.assert_array_equal(np.asarray(product(x[37:38], w_arg)), full[37:38])
        results[tag] = full
    for tag, full in results.items():
        np.testing.assert_array_equal(full, results["native"], err_msg=f"{tag} build against this machine's")
    np.testing.assert_allclose(results["native"], reference, rtol=0, atol=2e-5 * np.abs(reference).max())


def test_each_element_is_the_fused_multiply_add_sequence_the_source_states(builds):
    """rows_by_columns: acc = fma(x[k], w[k, n], acc) for k = 0..K-1, against that sequence emulated in numpy: the
    float64 product of two float32 values is exact, and its sum with acc rounded to float64 and then to float32
    equals one rounding except in cases of probability about 2**-29 per term (none among these 555)."""
    x, w = _values((37, 5), rows=3, seed=1)
    got = np.asarray(jax.jit(cpu_products.row_product)(x, w))
    acc = np.zeros((3, 5), np.float32)
    for k in range(37):
        acc = (x[:, k : k + 1].astype(np.float64) * w[k].astype(np.float64) + acc).astype(np.float32)
    np.testing.assert_array_equal(got, acc)


def test_batched_products_are_each_their_own_and_blind_to_query_count_and_trailing_zeros():
    """x [R, M, K] times w [R, K, N] (attention's): product r equals the unbatched product of x[r] and w[r]; its
    first rows are the same at any M; zero rows of x and w appended along K (the probabilities and values of
    unfilled cache slots) change nothing, bit for bit."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 17, 40), dtype=np.float32)
    w = rng.standard_normal((6, 40, 70), dtype=np.float32)
    batched = jax.jit(cpu_products.batched_row_product)
    full = np.asarray(batched(x, w))
    single = jax.jit(cpu_products.row_product)
    for r in range(6):
        np.testing.assert_array_equal(full[r], np.asarray(single(x[r], w[r])))
    for m in (1, 2, 5, 16):
        np.testing.assert_array_equal(np.asarray(batched(x[:, :m], w)), full[:, :m])
    padded_x = np.concatenate([x, np.zeros((6, 17, 88), np.float32)], axis=2)
    padded_w = np.concatenate([w, rng.standard_normal((6, 88, 70), dtype=np.float32)], axis=1)
    np.testing.assert_array_equal(np.asarray(batched(padded_x, padded_w)), full)


def test_a_batched_product_reads_a_view_of_a_longer_weight_in_place():
    """x [R, M, K'] times the first K' rows and N' columns of w [R, K, N] (a decode step over the first slots of a
    longer cache): the bits of the product with that view copied out, for views that end inside a vector, at one
    and beyond the register blocks; a view of the whole weight is the plain product."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 300, 530), dtype=np.float32)
    x = rng.standard_normal((3, 5, 300), dtype=np.float32)
    for k, n in ((300, 530), (37, 530), (300, 17), (256, 256), (100, 300), (1, 1)):
        view = jax.jit(cpu_products.batched_row_product, static_argnums=2)(x[:, :, :k], w, n)
        copied = jax.jit(cpu_products.batched_row_product)(x[:, :, :k], np.ascontiguousarray(w[:, :k, :n]))
        assert view.shape == (3, 5, n)
        np.testing.assert_array_equal(np.asarray(view), np.asarray(copied))
    want = np.einsum("rmk,rkn->rmn", x[:, :, :100].astype(np.float64), w[:, :100, :300].astype(np.float64))
    got = jax.jit(cpu_products.batched_row_product, static_argnums=2)(x[:, :, :100], w, 300)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="x must be"):
        jax.jit(cpu_products.batched_row_product)(np.ones((3, 5, 301), np.float32), w).block_until_ready()


def test_output_shape_follows_the_weights_other_axes():
    x = jnp.ones((2, 3, 8), jnp.float32)
    w = jnp.ones((8, 4, 5), jnp.float32)
    out = jax.jit(cpu_products.row_product)(x, w)
    assert out.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(np.asarray(out), 8.0)
    head = jax.jit(lambda x, e: cpu_products.row_product(x, e, weight_rows=True))(x, jnp.ones((11, 8)))
    assert head.shape == (2, 3, 11)


@pytest.mark.parametrize("arithmetic", ["exact", "fast"])
def test_exact_passes_use_the_kernel_and_fast_ones_do_not(arithmetic):
    """The bundled model's exact decode step and prefill call the kernel for every product, the tied head and the
    attention's sum over the slots included (the custom calls are in the program); no pass of the fast arithmetic
    does."""
    gen = gpt_jax.load().with_arithmetic(arithmetic)
    cache, pad = gen.programs.new_cache(3, 32), jnp.zeros((3,), jnp.int32)

    def program(tokens, mode):
        return feed.lower(gen.programs.logits_fn, gen.params, tokens, pad, cache, mode).as_text()

    decode = program(jnp.ones((3, 1), jnp.int32), ForwardMode.DECODE)
    prefill = program(jnp.ones((3, 8), jnp.int32), ForwardMode.PREFILL)
    # q k v o, gate up down, scores, the softmax's sum and probabilities times values
    per_layer = 4 + (3 if gen.config.mlp == "swiglu" else 2) + 3
    for text in (decode, prefill):
        if arithmetic == "exact":
            assert text.count("@gpt_jax_rows_by_columns(") == per_layer * gen.config.n_layers
            assert text.count("@gpt_jax_rows_by_rows(") == 1  # the tied head
        else:
            assert "gpt_jax_rows_by" not in text


def test_without_a_compiler_it_warns_and_falls_back(tmp_path):
    """CXX naming no compiler: a RuntimeWarning that says so, and generation still works (XLA's tiles)."""
    script = (
        "import warnings, gpt_jax\n"
        "from gpt_jax.model.kernels import cpu_products\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert not cpu_products.enabled()\n"
        "assert any('could not be built' in str(w.message) for w in caught), caught\n"
        "out = gpt_jax.load().generate(['To be'], max_new_tokens=3, temperature=0.0)\n"
        "print('generated', repr(out.texts[0]))\n"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++", "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generated" in done.stdout
