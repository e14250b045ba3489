"""Result files a command writes (benchmark JSON, plots): their place is checked before the work starts, an existing
file is replaced only when it is such a result (a JSON object with a "machine" entry, or a PNG image), and they are
written whole or not at all (a temporary file beside them, then a rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gpt_jax.errors import InputError, check


def check_output_file(path, flag: str) -> Path:
    """`path` can take a file: not a directory, its folder a directory or creatable. An InputError names `flag`."""
    check(isinstance(path, (str, os.PathLike)) and str(path) != "", InputError, f"{flag} must be a file path")
    check("\x00" not in str(path), InputError, f"{flag} {str(path)!r}: a path may not hold a NUL character")
    target = Path(path)
    check(not target.is_dir(), InputError, f"{flag} {target}: is a directory, not a file")
    check(
        not target.exists() or is_a_result(target),
        InputError,
        f"{flag} {target}: exists and is not a result file this command wrote (a JSON object with 'machine', or a "
        "PNG image); choose another path",
    )
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    check(folder.is_dir(), InputError, f"{flag} {target}: {folder} is not a directory")
    check(os.access(folder, os.W_OK), InputError, f"{flag} {target}: {folder} is not writable")
    return target


def is_a_result(path: Path) -> bool:
    """A file a benchmark wrote: a JSON object with a "machine" entry, or a PNG image."""
    try:
        head = path.read_bytes()[: 1 << 24] if path.is_file() else b""
    except OSError:
        return False
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return True
    try:
        data = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "machine" in data


def write_bytes_atomically(path, data: bytes) -> Path:
    """Write `data` to `path` whole: readers see the old file or the new one, never a part. The file gets the
    permissions a plain `open` would give it (the umask's), not the private ones of a temporary file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (setting it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomically(path, text: str) -> Path:
    return write_bytes_atomically(path, text.encode("utf-8"))
