"""Writing files and folders so that a crash or a kill never leaves a half-written one behind."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from bitlm.core.errors import BitLMError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""``OSError`` numbers that mean the device (or the user's quota) is out of space."""
TEMPORARY_SUFFIX = r"[a-z0-9_]{8}\.tmp"
"""What ``tempfile`` appends to the ``.NAME.`` prefix of the writers below: 8 characters, .tmp"""


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``; when the block completes the file
    is fsynced and renamed onto ``path`` (readers see the old file or the new one, never a part
    of one), when it raises the temporary file is removed and ``path`` is untouched. A full
    device is one ``BitLMError`` (``disk_full``), even when the writer (``torch.save``) hides
    the ``OSError`` behind an error of its own."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    handle = None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as raw:
            handle = _RecordingWriter(raw)
            yield handle  # type: ignore[misc]
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(name, path)
    except BaseException as err:
        written = Path(name).stat().st_size if Path(name).exists() else 0
        Path(name).unlink(missing_ok=True)
        cause = handle.error if handle is not None and handle.error is not None else err
        if isinstance(cause, OSError) and cause.errno in DISK_FULL:
            raise disk_full(path, written) from err
        raise


class _RecordingWriter:
    """A file handle that remembers the ``OSError`` its ``write`` raised."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def write_atomic(path: str | os.PathLike[str], data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` (bytes, or an iterable of byte blocks) to ``path`` through
    ``atomic_writer``."""
    blocks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    with atomic_writer(path) as handle:
        for block in blocks:
            handle.write(block)


@contextmanager
def staged_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside ``target`` to fill; when the block completes it replaces
    ``target`` (``replace_dir``), when it raises it is deleted and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual permissions
        yield staging
        replace_dir(staging, target)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        written = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_full(target, written) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Move folder ``new`` onto ``target``: an existing ``target`` is first renamed aside and
    deleted only once the new one is in place, so a crash leaves either the old complete folder
    or the new one (possibly beside ``.<name>.old``)."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def disk_full(target: Path, written: int) -> BitLMError:
    """The one-line error for a write of ``target`` that ran out of space after ``written``
    bytes (its partial output already removed): the path, what it needed, what is free."""
    free = shutil.disk_usage(_existing_parent(target)).free
    return BitLMError(
        f"no space left on the device of {target}: writing it filled the device after "
        f"{_size(written)} ({_size(free)} free now that the partial write is removed); it needs "
        "more than that: free some space (or write elsewhere) and run again (what was there "
        "before is unchanged)"
    )


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove what writes killed before they finished left in ``folder``: the temporary files
    and folders of ``atomic_writer`` / ``staged_dir`` (``.NAME.<8 characters>.tmp``) and the
    set-aside folders of ``replace_dir`` (``.NAME.old``), for the target ``NAME`` (its stem for
    a file) or, with ``name=None``, for any target. Nothing else matches these names, so
    nothing a user wrote is touched. Call it where no write of the same targets is running
    (one process, before it writes). Returns what was removed."""
    target = re.escape(name) if name is not None else r"[^/]+"
    pattern = re.compile(rf"\.{target}\.(?:{TEMPORARY_SUFFIX}|old)")
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))
    for path in stale:
        remove_path(path)
    return stale


def remove_path(path: Path) -> None:
    """Remove a file, a link or a folder with everything below it; nothing if it is absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
