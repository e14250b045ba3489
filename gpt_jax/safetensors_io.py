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
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
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

    def release(self, name: str) -> None:
        """Tell the kernel the tensor's pages are no longer needed (they are reread from disk if touched again)."""
        start, end = self.header[name]["data_offsets"]
        page = mmap.PAGESIZE
        lo = (self.base + start) // page * page
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED") and end > start:
            self._map.madvise(mmap.MADV_DONTNEED, lo, self.base + end - lo)


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only array backed by a memory map (no copy is made)."""
    f = SafetensorsFile(path)
    return {name: f.get(name) for name in f.names}


def write(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (any layout; made contiguous) with the safetensors package."""
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # (ascontiguousarray would make 0-d 1-d)
    safetensors.numpy.save_file(arrays, str(path), metadata=metadata)


def to_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """The safetensors encoding of `tensors`, in memory (no temporary file)."""
    return safetensors.numpy.save({k: np.asarray(v, order="C") for k, v in tensors.items()})
