"""Prepared data: text files, folders, globs or a Hugging Face dataset → a byte memmap folder.

Layout of a prepared folder (``bitlm-prepare output=DIR``; ``data=memmap data.path=DIR`` reads
it)::

    bytes.u8     the byte stream: every document's bytes in order, each followed by b"\\n" when
                 it does not end with one (``terminated``: each starts on a new line)
    index.json   {"format", "bytes", "sources": [{"name", "offset", "bytes", "documents"}],
                  "split": {"val_fraction", "chunk_bytes", "train_bytes", "val_bytes"}}

A source is one file (one document) or one dataset split (one document per record, its
``text_field``). The split is the rule of ``bitlm.data.windows`` (chunk k of ``chunk_bytes`` is
validation iff k mod p = p − 1, p = round(1/val_fraction)), fixed here: the chunk size shrinks
for a short text to ``bytes // p`` so that it still gets all p chunks, and is recorded.

Preparing streams: blocks of at most 1 MiB go from the source to the file, so memory stays flat
whatever the input size (a single line of gigabytes included), and binary data is copied as it is.
The folder is written under a temporary name and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bitlm.core.errors import BitLMError
from bitlm.core.files import remove_stale_temporaries, staged_dir
from bitlm.data.corpus import resolve_paths
from bitlm.data.store import (
    PREPARED_BYTES,
    PREPARED_FORMAT,
    PREPARED_INDEX,
    file_blocks,
    terminated,
)
from bitlm.data.windows import split_period, split_segments

Document = Iterable[bytes]
"""A document as blocks of bytes."""


@dataclass(frozen=True)
class Source:
    """Named documents; ``size`` is their total in bytes when known (for the progress bar)."""

    name: str
    documents: Iterable[Document]
    size: int | None = None


def file_sources(patterns: Sequence[str | os.PathLike[str]]) -> list[Source]:
    """One source per file that ``patterns`` (files, folders, globs) resolve to, sorted."""
    return [
        Source(str(path), [file_blocks(path)], path.stat().st_size)
        for path in resolve_paths(patterns)
    ]


def hf_source(
    name: str, split: str = "train", text_field: str = "text", config: str | None = None
) -> Source:
    """The records of a Hugging Face dataset split as documents: ``name`` is a folder written by
    ``Dataset.save_to_disk``, a folder of data files (json, csv, parquet, text) or a dataset on
    the Hub (streamed, never downloaded whole)."""
    try:
        import datasets
    except ImportError as err:
        raise BitLMError(
            "reading a Hugging Face dataset needs the datasets package: pip install 'bitlm[hf]'"
        ) from err
    dataset = _load_hf(datasets, name, split, config)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and text_field not in columns:
        raise BitLMError(
            f"dataset {name!r} has no column {text_field!r}: its columns are {columns}; "
            "choose one with hf_text_field=…"
        )
    return Source(f"hf:{name}:{split}", _records(dataset, text_field), None)


def _load_hf(datasets: Any, name: str, split: str, config: str | None) -> Any:
    path = Path(name).expanduser()
    saved = (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    try:
        dataset = (
            datasets.load_from_disk(str(path))
            if saved
            else datasets.load_dataset(name, config, split=split, streaming=True)
        )
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as err:
        raise BitLMError(
            f"cannot load Hugging Face dataset {name!r} (split {split!r}): "
            f"{_first_line(err)}. Without network, pass a local dataset folder"
        ) from err
    if not saved:
        return dataset
    if isinstance(dataset, datasets.DatasetDict):
        available = list(dataset)
    else:  # one saved split (or none recorded)
        available = [str(dataset.split)] if dataset.split is not None else [split]
    if split not in available:
        raise BitLMError(
            f"dataset {name!r} has no split {split!r}: its splits are {available}; "
            "choose one with hf_split=…"
        )
    return dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset


def _records(dataset: Iterable[dict[str, Any]], text_field: str) -> Iterator[Document]:
    for record in dataset:
        text = record[text_field]
        if isinstance(text, str):
            text = text.encode("utf-8")
        if not isinstance(text, bytes):
            raise BitLMError(f"field {text_field!r} holds {type(text).__name__}, not text")
        yield [text]


def _first_line(err: BaseException) -> str:
    return next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)


def prepare(
    sources: Sequence[Source],
    output: str | os.PathLike[str],
    val_fraction: float = 0.05,
    split_chunk_bytes: int = 4096,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the prepared folder ``output`` from ``sources`` (module docstring); return its index.

    An existing ``output`` is replaced only with ``overwrite`` and only if it is a prepared
    folder itself; anything else there is never touched. The staging folder and set-aside old
    copy that an earlier, killed preparation of ``output`` left beside it are removed first.
    """
    period = split_period(val_fraction)
    if split_chunk_bytes < 1:
        raise BitLMError(f"split_chunk_bytes must be a positive integer, got {split_chunk_bytes}")
    output = Path(output).expanduser()
    remove_stale_temporaries(output.parent, output.name)  # what a killed preparation left
    _check_output(output, overwrite)
    with staged_dir(output) as staging:
        entries = _write_stream(sources, staging / PREPARED_BYTES, progress)
        n_bytes = (staging / PREPARED_BYTES).stat().st_size
        if n_bytes == 0:
            raise BitLMError("the inputs hold no text (every file or record is empty)")
        chunk = min(split_chunk_bytes, n_bytes // period)
        if chunk < 1:
            raise BitLMError(
                f"{n_bytes} bytes of text cannot be split into {period} chunks for "
                f"val_fraction={val_fraction}: give more text"
            )
        _, val = split_segments(n_bytes, val_fraction, chunk)
        val_bytes = sum(end - start for start, end in val)
        index = {
            "format": PREPARED_FORMAT,
            "bytes": n_bytes,
            "sources": entries,
            "split": {
                "val_fraction": val_fraction,
                "chunk_bytes": chunk,
                "train_bytes": n_bytes - val_bytes,
                "val_bytes": val_bytes,
            },
        }
        (staging / PREPARED_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _check_output(output: Path, overwrite: bool) -> None:
    if not output.exists():
        return
    if not (output / PREPARED_INDEX).is_file():
        raise BitLMError(
            f"output {output} exists and is not a prepared data folder: choose another output "
            "(bitlm-prepare never deletes anything else)"
        )
    if not overwrite:
        raise BitLMError(
            f"output {output} already holds prepared data: pass overwrite=true to replace it"
        )


def _write_stream(sources: Sequence[Source], path: Path, progress: bool) -> list[dict[str, Any]]:
    """Write every document of ``sources`` to ``path``, each ``terminated``; return the index
    entry of each source."""
    sizes = [source.size for source in sources]
    bar = tqdm(
        total=None if None in sizes else sum(sizes),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="prepare",
        disable=not progress,
        file=sys.stderr,
    )
    entries, offset = [], 0
    with path.open("wb") as out, bar:
        for source in sources:
            start, documents = offset, 0
            for document in source.documents:
                written = 0
                for block in terminated(document):
                    written += out.write(block)
                    bar.update(len(block))
                offset, documents = offset + written, documents + (written > 0)
            entries.append(
                {"name": source.name, "offset": start, "bytes": offset - start}
                | {"documents": documents}
            )
        out.flush()
        os.fsync(out.fileno())
    return entries
