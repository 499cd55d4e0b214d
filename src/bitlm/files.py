"""Writing files and folders so that a crash or a kill never leaves a half-written one behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``; when the block completes the file
    is fsynced and renamed onto ``path`` (readers see the old file or the new one, never a part
    of one), when it raises the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
