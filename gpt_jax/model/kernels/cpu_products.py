"""Row-invariant products on XLA:CPU from a kernel of our own (row_products.cc), called through XLA's FFI.

XLA:CPU multiplies one row by a matrix-vector kernel and more rows by others, each rounding in its own order, so
the exact arithmetic (row_invariant.py) used to pair a lone row with a zero row and multiply rows in measured
tiles: a batch-1 decode step then ran at the two-row kernel's speed, well short of the read bandwidth. This kernel
computes every output element by one fixed sequence of fused multiply-adds that depends on the contracted length
alone (see the .cc file), so a row's values are the same at any row count by construction, and one row streams
the weight at about the machine's read bandwidth (docs/BENCHMARKS.md). The sequence does not depend on the
vector width either: builds for AVX-512, AVX2 and plain x86-64 give the same bits (tests/test_cpu_products.py).

When it is used: the float32 products of a decode step, a verification pass and a prefill (`usable`), and the
element-order sums of attention's and the sampler's softmax (row_invariant.element_order_sum, x times a column
of ones), and the sampler's top-k / top-p cut (`keep_top_cut`, sampler.cc), on the CPU backend of a process with one device (a multi-device CPU process, as the sharding tests
run, keeps XLA's tiled products, so both sides of a sharded-against-unsharded comparison use one arithmetic), unless GPT_JAX_CPU_KERNELS=0.
The library is compiled once per machine with the C++ compiler ($CXX, else g++) for the machine's own instruction set
and kept under $XDG_CACHE_HOME/gpt_jax/kernels (else ~/.cache/gpt_jax/kernels), keyed by the sources, the flags,
the compiler's version and the CPU's feature flags. Without a compiler, or when the build fails, a warning says
why and the products fall back to XLA's tiles (still row-invariant, slower for a lone row).

Axes: M rows (everything before the contracted axis, flattened), K contracted, N output columns.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

from gpt_jax.util.compile_cache import cache_home

SOURCES = tuple(Path(__file__).with_name(name) for name in ("row_products.cc", "sampler.cc"))
ENV = "GPT_JAX_CPU_KERNELS"
TARGETS = ("rows_by_columns", "rows_by_rows", "keep_top")
BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-w")


def cache_directory() -> Path:
    return cache_home() / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler_version(compiler: str) -> str:
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()[0] if out.stdout else ""


def build(march: str = "native", directory: Path | None = None) -> Path:
    """The kernel library for `march` (a -march value, or "" for the compiler's default), compiled if it is not in
    `directory` (default: cache_directory()) yet. Written to a temporary name and renamed into place, so processes
    building at once never load half a file. Raises OSError or CalledProcessError when it cannot be built."""
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise OSError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX)")
    flags = [*BASE_FLAGS, *([f"-march={march}"] if march else []), f"-I{jax.ffi.include_dir()}"]
    key = hashlib.sha256(
        "\n".join([*(source.read_text() for source in SOURCES), *flags, _compiler_version(compiler), _cpu_flags()]).encode()
    ).hexdigest()[:20]
    directory = Path(directory) if directory is not None else cache_directory()
    target = directory / f"row_products-{march or 'default'}-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".row_products-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True, timeout=600, check=True
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def register(library: Path, prefix: str = "gpt_jax") -> str:
    """Register the library's handlers with XLA:CPU as `{prefix}_rows_by_columns`, `{prefix}_rows_by_rows` and
    `{prefix}_keep_top`; returns the prefix."""
    lib = ctypes.cdll.LoadLibrary(str(library))
    for name in TARGETS:
        handler = jax.ffi.pycapsule(getattr(lib, f"gpt_jax_{name}"))
        jax.ffi.register_ffi_target(f"{prefix}_{name}", handler, platform="cpu")
    return prefix


@functools.cache
def _registered() -> str | None:
    """The registered prefix, building and loading the library on first use; None (with a warning) when it
    cannot be built or loaded."""
    try:
        return register(build())
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        warnings.warn(
            f"gpt_jax: the CPU product kernel could not be built ({detail.strip()[:500]}); exact decoding uses "
            f"XLA's tiled products instead (row-invariant, slower for one row). Set {ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


@functools.cache
def enabled() -> bool:
    """Whether decode products in this process come from the kernel: the CPU backend, one device, not turned off
    by GPT_JAX_CPU_KERNELS=0, and the kernel built. Decided once per process."""
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return False
    return _registered() is not None


def usable(x: jax.Array, w: jax.Array) -> bool:
    """Whether the product of x and the float weight w can come from the kernel (see `enabled`)."""
    return x.dtype == jnp.float32 and w.dtype == jnp.float32 and enabled()


def row_product(x: jax.Array, w: jax.Array, weight_rows: bool = False, prefix: str | None = None) -> jax.Array:
    """x [..., K] times w [K, ...] (its first axis contracted) -> [..., *w.shape[1:]], or, with `weight_rows`,
    times w [N, K] (its last axis contracted) -> [..., N]. float32 only. `prefix` names another registered build
    (tests compare builds); by default the one `enabled` built."""
    prefix = prefix or _registered()
    k = x.shape[-1]
    w2 = w if weight_rows else w.reshape(k, -1)
    n = w2.shape[0] if weight_rows else w2.shape[1]
    out_shape = (*x.shape[:-1], n) if weight_rows else (*x.shape[:-1], *w.shape[1:])
    name = f"{prefix}_{TARGETS[1] if weight_rows else TARGETS[0]}"
    flat = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct((x.size // max(k, 1), n), jnp.float32))
    return flat(x.reshape(-1, k), w2).reshape(out_shape)


def batched_row_product(x: jax.Array, w: jax.Array, columns: int | None = None) -> jax.Array:
    """x [R, M, K'] times the first K' rows and `columns` N' columns (default: all N) of w [R, K, N] -> [R, M, N']:
    R products on their own (attention's, one per row and kv head; a view of a longer cache is read in place),
    each element by the same fixed sequence as row_product. float32 only."""
    r, m, _ = x.shape
    n = w.shape[2] if columns is None else columns
    call = jax.ffi.ffi_call(f"{_registered()}_{TARGETS[0]}", jax.ShapeDtypeStruct((r, m, n), jnp.float32))
    return call(x, w)


def keep_top_cut(keys: jax.Array, weights: jax.Array, budget: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The sampler's top-k or top-p cut (sampler.cc): keys [B, V] uint32, weights [B, V] uint32 and budget [B]
    uint32 -> (boundary [B] uint32, last [B] int32), where token i is kept exactly when keys[i] > boundary, or
    keys[i] == boundary and i <= last: the tokens ranked (by key, descending, ties by lower index) before the
    running weight reaches the budget, and the one that reaches it. Integer sums, so exact and row by row."""
    b = keys.shape[0]
    call = jax.ffi.ffi_call(
        f"{_registered()}_{TARGETS[2]}", (jax.ShapeDtypeStruct((b,), jnp.uint32), jax.ShapeDtypeStruct((b,), jnp.int32))
    )
    return call(keys, weights, budget)
