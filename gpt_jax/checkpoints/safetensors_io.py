"""Reading and writing safetensors files: memory-mapped reads with every header field checked.

A reader of our own (the format is an 8-byte header length, a JSON header, then raw little-endian data) lets us
memory-map tensors instead of copying the file, and turn every kind of damage (truncation, bad JSON, offsets past
the end, unknown dtypes) into one typed error naming the file. Writing uses the `safetensors` package.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import struct
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from gpt_jax.errors import CheckpointError, check

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER = 100 * 1024 * 1024
FLOAT_DTYPES = {np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


def is_float(dtype) -> bool:
    """A floating-point dtype that weights may be stored in."""
    return np.dtype(dtype) in FLOAT_DTYPES


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_metadata(path: Path) -> dict:
    """The file's `__metadata__` (string to string), {} when it has none."""
    return _read_raw_header(Path(path))[0].get("__metadata__") or {}


def _read_raw_header(path: Path) -> tuple[dict, int, int]:
    """(the header as written, the offset where data begins, the file size)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        check(len(head) == 8, CheckpointError, f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        check(
            0 < n <= min(MAX_HEADER, size - 8),
            CheckpointError,
            f"{path}: corrupt safetensors header (claims {n} header bytes in a {size}-byte file)",
        )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
    check(isinstance(header, dict), CheckpointError, f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")
    check(
        metadata is None or isinstance(metadata, dict),
        CheckpointError,
        f"{path}: corrupt safetensors header (__metadata__ is not an object)",
    )
    return header, 8 + n, size


def read_header(path: Path) -> tuple[dict, int]:
    """The header dict (without __metadata__) and the offset where data begins; every entry checked."""
    header, base, size = _read_raw_header(path)
    header = {k: v for k, v in header.items() if k != "__metadata__"}
    data_size = size - base
    for name, info in header.items():
        ok = (
            isinstance(info, dict)
            and info.get("dtype") in DTYPES
            and isinstance(info.get("shape"), list)
            and all(_is_int(d) for d in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(_is_int(o) for o in info["data_offsets"])
        )
        check(
            ok,
            CheckpointError,
            f"{path}: tensor {name!r} has a malformed or unsupported header entry {str(info)[:200]}",
        )
        start, end = info["data_offsets"]
        expected = math.prod(info["shape"]) * np.dtype(DTYPES[info["dtype"]]).itemsize  # exact: Python integers
        check(
            0 <= start <= end <= data_size and end - start == expected,
            CheckpointError,
            f"{path}: tensor {name!r} data is truncated or corrupt (offsets {start}..{end}, "
            f"{data_size} data bytes in the file, {expected} expected)",
        )
    return header, base


COPY_SLAB_BYTES = 64 * 2**20


class SafetensorsFile:
    """One memory-mapped safetensors file: `get(name)` is a zero-copy view, `release(name)` drops its pages."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check(self.path.is_file(), CheckpointError, f"{self.path}: file not found")
        self.header, self.base = read_header(self.path)
        self.names = list(self.header)
        self._map = None
        if self.header:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtype = np.dtype(DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        arr = np.frombuffer(self._map, dtype=dtype, count=(end - start) // dtype.itemsize, offset=self.base + start)
        return arr.reshape(info["shape"])

    def release(self, name: str, lo: int = 0, hi: int | None = None) -> None:
        """Tell the kernel that bytes lo..hi of the tensor (default: all) are no longer needed; they are reread
        from disk if touched again."""
        start, end = self.header[name]["data_offsets"]
        hi = end - start if hi is None else min(hi, end - start)
        first = (self.base + start + lo) // mmap.PAGESIZE * mmap.PAGESIZE
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED") and hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, first, self.base + start + hi - first)

    def copy_into(self, name: str, view: np.ndarray, dest: np.ndarray) -> None:
        """dest[...] = view (a view of tensor `name`, e.g. transposed or reshaped; cast to dest's dtype), a slab at a
        time along the view's outermost axis in the file, each slab's pages released once copied: the tensor is
        never resident twice."""
        if view.ndim == 0 or view.size == 0:
            dest[...] = view
            return
        axis = int(np.argmax(view.strides))
        stride, rows = view.strides[axis], view.shape[axis]
        step = max(1, COPY_SLAB_BYTES // max(stride, 1))
        for i in range(0, rows, step):
            slab = (slice(None),) * axis + (slice(i, i + step),)
            dest[slab] = view[slab]
            self.release(name, i * stride, (i + step) * stride)


def to_device(file: SafetensorsFile, name: str, view: np.ndarray, dtype, into: np.ndarray | None = None):
    """`view` (of tensor `name` of `file`, e.g. transposed) as a device array of `dtype`, its pages released.

    Up to a slab, in one go; larger, copied slab by slab into a host array of the final dtype (the tensor is never
    resident twice) that the CPU backend then uses in place (aligned, aliased) and other backends copy to the device.
    Peak host memory while loading a checkpoint: the converted weights plus about one slab.
    """
    if view.size * np.dtype(dtype).itemsize <= COPY_SLAB_BYTES:
        out = jax.numpy.asarray(view, dtype=dtype)
        file.release(name)
        return out
    dest = aligned_empty(view.shape, dtype)
    file.copy_into(name, view, dest)
    return jax.device_put(dest, may_alias=True)


def aligned_empty(shape, dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `alignment`-byte boundary: on the CPU backend
    `jax.device_put(a, may_alias=True)` then uses it in place instead of copying it."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size >= 2**21:  # page-aligned anonymous memory, in huge pages where the kernel allows: fewer page faults
        memory = mmap.mmap(-1, size)
        if hasattr(memory, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
            memory.madvise(mmap.MADV_HUGEPAGE)
        return np.frombuffer(memory, dtype).reshape(shape)
    raw = np.empty(size + alignment, np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only array backed by a memory map (no copy is made)."""
    f = SafetensorsFile(path)
    return {name: f.get(name) for name in f.names}


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (any layout; made contiguous) with the safetensors package. A failure of the file system (a
    full disk, no permission) is an OSError with its errno, as any other write's, not safetensors' own error."""
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # (ascontiguousarray would make 0-d 1-d)
    try:
        safetensors.numpy.save_file(arrays, str(path), metadata=metadata)
    except safetensors.SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from None


def to_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """The safetensors encoding of `tensors`, in memory (no temporary file)."""
    return safetensors.numpy.save({k: np.asarray(v, order="C") for k, v in tensors.items()})
