"""Training bytes on disk: one cache file per source, read through a read-only numpy memmap.

Bytes, not bits, are stored: bits are 9x larger and cost almost nothing to derive per batch.
The cache file is ``<cache_dir>/<key>.u8`` where ``key`` hashes the identity of the source, so a
second run (or a second rank, or a data-loader worker) opens it instead of rebuilding it:

- built-in corpus: its name and the Python version (the pydoc text changes between versions);
- files: each resolved path with its size and modification time, so editing a file rebuilds.

The file is written under a temporary name and moved into place with ``os.replace``, so a crash
never leaves a half-written cache and concurrent builders (several ranks) cannot corrupt it.
Old cache files are never deleted automatically; removing the cache directory is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bitlm.core.errors import BitLMError
from bitlm.core.files import write_atomic
from bitlm.data.corpus import load_corpus, resolve_paths

_FORMAT_VERSION = 2  # bump when the byte layout of a cache file changes
READ_BLOCK = 1 << 20
"""Bytes read or written at a time: memory stays flat whatever the size of a file."""
PREPARED_FORMAT, PREPARED_BYTES, PREPARED_INDEX = 1, "bytes.u8", "index.json"
"""The format tag and file names of a ``bitlm-prepare`` folder (``bitlm.data.prepare``)."""


def default_cache_dir() -> Path:
    """Return ``$BITLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/bitlm``, else ``~/.cache/bitlm``."""
    if os.environ.get("BITLM_CACHE_DIR"):
        return Path(os.environ["BITLM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "bitlm"
    return Path.home() / ".cache" / "bitlm"


class ByteStore:
    """A read-only uint8 byte stream backed by a cache file, with the names of its sources.

    Build one with :meth:`from_corpus` or :meth:`from_paths`. ``store.data`` is the
    ``np.memmap``; ``len(store)`` and ``store[a:b]`` read it directly. Pickling stores only the
    path, so data-loader workers (fork or spawn) re-open the file instead of copying the bytes.
    """

    def __init__(self, path: str | os.PathLike[str], sources: Sequence[str]) -> None:
        self.path = Path(path)
        self.sources = list(sources)
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")

    @classmethod
    def from_corpus(cls, name: str, cache_dir: str | os.PathLike[str] | None = None) -> ByteStore:
        """Open (building it on first use) the cache of the built-in corpus ``name``."""
        version = ".".join(map(str, sys.version_info[:3]))
        identity = {"corpus": name, "python": version}
        path = _cache_path(identity, cache_dir)
        if not path.exists():
            write_atomic(path, [load_corpus(name)])
        return cls(path, [name])

    @classmethod
    def from_paths(
        cls,
        patterns: Sequence[str | os.PathLike[str]],
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> ByteStore:
        """Open (building it on first use) the cache of the user's text files.

        ``patterns`` are files, directories or globs, expanded by :func:`resolve_paths` into a
        sorted list. The files are concatenated in that order, each followed by ``b"\\n"`` when
        it does not end with one (``terminated``), so every file starts on a new line. Nothing
        else is added or changed.
        """
        files = resolve_paths(patterns)
        identity = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        path = _cache_path({"files": identity}, cache_dir)
        if not path.exists():
            write_atomic(path, (block for f in files for block in terminated(file_blocks(f))))
        return cls(path, [str(f) for f in files])

    @classmethod
    def from_prepared(cls, folder: str | os.PathLike[str]) -> tuple[ByteStore, dict[str, Any]]:
        """Open a folder written by ``bitlm-prepare`` (``bitlm.data.prepare``): the store and
        its index. Refuses a folder that is not one, or whose byte file does not have the size
        its index records (truncated or replaced)."""
        folder = Path(folder).expanduser()
        index_path, bytes_path = folder / PREPARED_INDEX, folder / PREPARED_BYTES
        if not index_path.is_file() or not bytes_path.is_file():
            raise BitLMError(
                f"{folder} is not a prepared data folder (no index.json and bytes.u8): make one "
                f"with bitlm-prepare 'inputs=[…]' output={folder}"
            )
        index = _read_index(index_path)
        expected = index["bytes"]
        if index["format"] != PREPARED_FORMAT:
            raise BitLMError(
                f"{index_path} has format {index['format']!r}; this bitlm reads {PREPARED_FORMAT}"
            )
        if bytes_path.stat().st_size != expected or not expected:
            raise BitLMError(
                f"{bytes_path} holds {bytes_path.stat().st_size} bytes but its index records "
                f"{expected}: the folder is damaged; prepare it again"
            )
        return cls(bytes_path, [s["name"] for s in index["sources"]]), index

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: slice) -> np.ndarray:
        return self.data[index]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "sources": self.sources}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["sources"])

    def __repr__(self) -> str:
        return f"ByteStore({str(self.path)!r}, {len(self)} bytes, sources={self.sources})"


def _read_index(path: Path) -> dict[str, Any]:
    """The parsed ``index.json`` of a prepared folder, refusing one without the fields the data
    module reads."""
    try:
        index = json.loads(path.read_text())
        missing = [k for k in ("format", "bytes", "sources", "split") if k not in index]
        split = index.get("split", {})
        missing += [f"split.{k}" for k in ("val_fraction", "chunk_bytes") if k not in split]
    except (ValueError, TypeError, KeyError) as err:
        raise BitLMError(f"{path} is not a bitlm-prepare index: {err}") from err
    if missing:
        raise BitLMError(f"{path} is not a bitlm-prepare index: it lacks {', '.join(missing)}")
    return index


def _cache_path(identity: dict[str, Any], cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``<cache_dir>/<key>.u8``, key = sha256 of the JSON identity (first 24 hex digits)."""
    blob = json.dumps({"format": _FORMAT_VERSION, **identity}, sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:24]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BitLMError(
            f"cannot create cache directory {directory} ({err.strerror}): "
            "set data.cache_dir or $BITLM_CACHE_DIR to a writable directory"
        ) from err
    return directory / f"{key}.u8"


def file_blocks(path: Path) -> Iterator[bytes]:
    """The bytes of the file at ``path`` in blocks of at most ``READ_BLOCK``."""
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            yield block


def terminated(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-empty blocks of one document, then ``b"\\n"`` if it does not end with one: a
    stream of terminated documents starts each on a new line."""
    last = b""
    for block in blocks:
        if block:
            last = block
            yield block
    if last and not last.endswith(b"\n"):
        yield b"\n"
