"""Writing a checkpoint directory without ever losing what a user owns.

- `check_target`: before anything is written, the target must be new, empty, or a directory that is itself a
  checkpoint (every entry a file this project writes); a regular file, or a directory holding anything else, is
  refused with a typed error. Missing parents are created, and the location is checked to be writable.
- `atomic_directory`: the files go into a temporary sibling directory that replaces the target only when complete,
  so an interrupted save leaves the previous checkpoint loadable and no temporary directory behind. Two processes
  saving to the same target at once both finish; the last one to finish is what stays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from gpt_jax.errors import CheckpointError, InputError, check

RENAME_ATTEMPTS = 20


def as_path(directory, what: str = "directory") -> Path:
    """A non-empty str or os.PathLike -> Path; anything else is an InputError naming `what`."""
    check(
        isinstance(directory, (str, os.PathLike)) and not isinstance(directory, bytes),
        InputError,
        f"{what} must be a str or os.PathLike path, got {type(directory).__name__}",
    )
    text = os.fspath(directory)
    check(
        isinstance(text, str) and text.strip() != "" and "\0" not in text,
        InputError,
        f"{what} must be a non-empty path, got {text!r}",
    )
    return Path(text)


def check_target(target: Path, own_files: Iterable[str]) -> None:
    """Refuse (CheckpointError) to write over anything but a checkpoint; create missing parents; check that the
    parent directory is writable. Nothing of the user's is touched."""
    own = set(own_files)
    check(
        target.resolve() != Path.cwd().resolve(),
        CheckpointError,
        f"{target}: is the working directory; save into a new directory instead",
    )
    try:  # one lstat: a concurrent save that moves the directory aside cannot make it look like a file
        is_other = not stat.S_ISDIR(os.lstat(target).st_mode)
    except FileNotFoundError:
        is_other = False
    if is_other:
        raise CheckpointError(f"{target}: exists and is not a checkpoint directory; refusing to replace it")
    foreign = _foreign_entries(target, own)
    check(
        not foreign,
        CheckpointError,
        f"{target}: is a directory holding files that are not a checkpoint's ({', '.join(foreign[:5])}"
        f"{', ...' if len(foreign) > 5 else ''}); refusing to replace it: save into a new directory",
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CheckpointError(f"{target.parent}: exists and is not a directory") from None
    probe = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.probe-")
    probe.close()


def _foreign_entries(directory: Path, own: set[str]) -> list[str]:
    """Entries of `directory` that are not plain files named in `own` (none if it does not exist). Types come from
    the directory listing itself, so a concurrent save that swaps the directory cannot make an entry look foreign."""
    try:
        with os.scandir(directory) as entries:
            return sorted(
                e.name + ("/" if e.is_dir(follow_symlinks=False) else "")
                for e in entries
                if not (e.name in own and e.is_file(follow_symlinks=False))
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_extra_files(extra_files, reserved: Iterable[str]) -> dict[str, bytes]:
    """Extra files of a save: plain names (no separators, no '..', not hidden), not one of the checkpoint's own
    files, with bytes as values."""
    if extra_files is None:
        return {}
    check(isinstance(extra_files, dict), InputError, f"extra_files must be a dict {{name: bytes}}, got {extra_files!r}")
    reserved = set(reserved)
    for name, data in extra_files.items():
        plain = (
            isinstance(name, str)
            and name not in ("", ".", "..")
            and not name.startswith(".")
            and not any(c in name for c in "/\\\0")
        )
        check(
            plain, InputError, f"extra_files names must be plain file names (no '/', '..' or leading '.'), got {name!r}"
        )
        check(name not in reserved, InputError, f"extra_files name {name!r} is one of the checkpoint's own files")
        check(
            isinstance(data, (bytes, bytearray)),
            InputError,
            f"extra_files[{name!r}] must be bytes, got {type(data).__name__}",
        )
    return {name: bytes(data) for name, data in extra_files.items()}


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yields a temporary directory that replaces `target` only if the block completes."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            f.chmod(0o644)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o755)
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`, moving a previous `target` aside first and deleting it after. Another process may
    be doing the same: a vanished or reappeared target is retried, never an error."""
    for _ in range(RENAME_ATTEMPTS):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        try:
            try:
                os.replace(target, old)  # over the empty directory `old`
            except FileNotFoundError:
                pass  # no previous checkpoint (or another process just moved it aside)
            try:
                os.replace(tmp, target)
                return
            except OSError:  # another process put its checkpoint there in between: move that aside too
                continue
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise CheckpointError(f"{target}: could not be replaced after {RENAME_ATTEMPTS} attempts (saved concurrently?)")
