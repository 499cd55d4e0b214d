"""Where training text comes from: named built-in corpora and the user's own files.

A *corpus* is a named byte string that ships with Python itself, so a first run needs no
download and no network. The user's own text is given as a list of files, directories and
glob patterns, resolved here into one sorted list of files so that the byte stream (and with it
the train/validation split) is the same on every run and every machine.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from bitlm.core.errors import BitLMError

_GLOB_CHARS = frozenset("*?[")


def pydoc_corpus() -> bytes:
    """Return CPython's bundled documentation topics as UTF-8 bytes (~466 KB of English prose).

    The text is ``pydoc_data.topics.topics`` (the help pages behind ``help("if")`` and friends),
    its values joined in sorted key order with a blank line between them. It is part of every
    Python install, so it needs no download. The exact text differs slightly between Python
    versions, which is why the byte cache is keyed on the Python version too.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


CORPORA: dict[str, Callable[[], bytes]] = {"pydoc": pydoc_corpus}
"""Named built-in corpora: name -> function returning the corpus bytes."""


def load_corpus(name: str) -> bytes:
    """Return the bytes of the built-in corpus ``name`` (see :data:`CORPORA`)."""
    if name not in CORPORA:
        known = ", ".join(sorted(CORPORA))
        raise BitLMError(
            f"unknown corpus {name!r}: known corpora are {known}; "
            "for your own text use data=text 'data.paths=[...]'"
        )
    return CORPORA[name]()


def resolve_paths(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, directories and glob patterns into a sorted, de-duplicated list of files.

    Each entry is one of:

    - a file: taken as is (even if its name starts with a dot, since it was named explicitly);
      an empty file is an error;
    - a directory: every non-empty regular file below it, recursively, skipping hidden files
      and directories (names starting with ``.``); empty files add no text and are skipped;
    - a glob such as ``"docs/*.md"`` or ``"src/**/*.py"`` (``**`` matches any depth), treated
      like a list of the files and directories it matches.

    Paths are made absolute and resolved; the result is sorted so that the byte stream built
    from it does not depend on the order of the patterns or of the file system. Raises
    :class:`BitLMError` for a missing path, a named empty file, a glob or directory without
    non-empty files, or an empty pattern list.
    """
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    files: set[Path] = set()
    for pattern in patterns:
        files.update(_expand(os.path.expanduser(os.fspath(pattern))))
    if not files:
        raise BitLMError("no text files given: pass at least one file, directory or glob pattern")
    return sorted(files)


def _expand(pattern: str) -> list[Path]:
    """Return the files that one entry of :func:`resolve_paths` stands for (never empty)."""
    if _GLOB_CHARS.intersection(pattern):
        files = [file for match in glob.glob(pattern, recursive=True) for file in _files_in(match)]
        where = f"glob pattern {pattern!r} matches"
    else:
        path = Path(pattern)
        if not path.exists():
            raise BitLMError(f"no such file or directory: {pattern!r}")
        if path.is_file():
            if path.stat().st_size == 0:
                raise BitLMError(f"text file {pattern!r} is empty: remove it or add text to it")
            return [path.resolve()]
        files = _files_in(path)
        where = f"directory {pattern!r} contains"
    if not files:
        raise BitLMError(f"{where} no non-empty files: check the path or pattern")
    return files


def _files_in(path: str | Path) -> list[Path]:
    """Return the non-empty regular files at or below ``path``, skipping hidden ones below it."""
    path = Path(path)
    if path.is_dir():
        candidates = [file for file in path.rglob("*") if not _is_hidden(file.relative_to(path))]
    else:
        candidates = [path]
    return [file.resolve() for file in candidates if file.is_file() and file.stat().st_size > 0]


def _is_hidden(relative: Path) -> bool:
    """True if any component of ``relative`` starts with a dot."""
    return any(part.startswith(".") for part in relative.parts)
