"""Tests for bitlm.data (corpus, paths, byte store, split, windows, collation) and BitDataModule."""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bitlm.core.bits import FRAME_BITS, bytes_to_bits
from bitlm.core.errors import BitLMError
from bitlm.core.files import write_atomic
from bitlm.data import (
    ByteStore,
    TrainWindows,
    ValWindows,
    collate_bits,
    default_cache_dir,
    load_corpus,
    min_bytes_for_split,
    resolve_paths,
    split_segments,
)
from bitlm.training.datamodule import BitDataModule


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every default-located cache out of the user's home."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BITLM_CACHE_DIR", str(cache))
    return cache


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- split -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bytes", [1, 100, 4096 * 19, 4096 * 19 + 1, 4096 * 20, 1_000_003])
def test_split_is_deterministic_disjoint_and_covers_stream(n_bytes: int) -> None:
    train, val = split_segments(n_bytes, 0.05, 4096)
    assert (train, val) == split_segments(n_bytes, 0.05, 4096)
    covered = np.zeros(n_bytes, dtype=np.int64)
    for start, end in train + val:
        assert 0 <= start < end <= n_bytes
        covered[start:end] += 1
    assert (covered == 1).all()


def test_split_rule_and_fraction() -> None:
    chunk, n_bytes = 100, 100 * 1000
    train, val = split_segments(n_bytes, 0.05, chunk)
    assert val[:2] == [(1900, 2000), (3900, 4000)]  # chunks 19 and 39: k % 20 == 19
    assert train[:2] == [(0, 1900), (2000, 3900)]
    val_bytes = sum(end - start for start, end in val)
    assert val_bytes / n_bytes == pytest.approx(0.05)
    _, val_tenth = split_segments(n_bytes, 0.1, chunk)
    assert sum(e - s for s, e in val_tenth) / n_bytes == pytest.approx(0.1)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.7, 1.0])
def test_split_rejects_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(BitLMError, match="val_fraction"):
        split_segments(1000, fraction, 10)


# --- windows -----------------------------------------------------------------------------------


def test_train_windows_are_every_start_inside_a_segment() -> None:
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    train, _ = split_segments(len(data), 0.2, 37)  # period 5: train runs of 148 bytes
    window = 20
    windows = TrainWindows(data, train, window)
    expected = [s for a, b in train for s in range(a, b - window + 1)]
    starts = [windows.offset(i) for i in range(len(windows))]
    assert starts == expected
    for i in (0, 1, len(windows) // 2, len(windows) - 1):
        start = starts[i]
        assert windows[i].dtype == torch.uint8
        assert torch.equal(windows[i], torch.from_numpy(data[start : start + window]))
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_train_windows_skip_segments_shorter_than_window() -> None:
    windows = TrainWindows(np.zeros(100, np.uint8), [(0, 5), (10, 30), (40, 45)], 8)
    assert [windows.offset(i) for i in range(len(windows))] == list(range(10, 23))


def test_val_windows_deterministic_and_non_overlapping() -> None:
    data = np.arange(1000, dtype=np.int64).astype(np.uint8)
    _, val = split_segments(len(data), 0.2, 37)
    window = 10
    first, second = ValWindows(data, val, window), ValWindows(data, val, window)
    starts = [first.offset(i) for i in range(len(first))]
    assert starts == [second.offset(i) for i in range(len(second))]
    assert len(first) == sum((b - a) // window for a, b in val)
    for start in starts:
        assert any(a <= start and start + window <= b for a, b in val)
    assert all(b - a >= window for a, b in itertools.pairwise(starts))


def test_collate_bits_matches_bytes_to_bits() -> None:
    rows = [torch.tensor(row, dtype=torch.uint8) for row in ([0, 1, 255, 65], [7, 8, 9, 10])]
    bits = collate_bits(rows)
    assert bits.shape == (2, 4 * FRAME_BITS)
    assert bits.dtype == torch.uint8
    assert torch.equal(bits, bytes_to_bits(torch.stack(rows)))
    assert torch.equal(bits[0, :9], torch.tensor([0] * 9, dtype=torch.uint8))
    assert torch.equal(bits[0, 9:18], torch.tensor([0] * 7 + [1, 1], dtype=torch.uint8))


# --- corpus and paths --------------------------------------------------------------------------


def test_pydoc_corpus_is_large_english_text() -> None:
    text = load_corpus("pydoc")
    assert len(text) > 300_000
    assert sum(b < 128 for b in text[:100_000]) / 100_000 > 0.95
    assert b"the" in text


def test_unknown_corpus_lists_known_names() -> None:
    with pytest.raises(BitLMError, match=r"unknown corpus 'nope'.*pydoc"):
        load_corpus("nope")


def test_resolve_paths_file_dir_glob(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", b"a")
    b = _write(tmp_path / "docs" / "b.md", b"b")
    c = _write(tmp_path / "docs" / "sub" / "c.md", b"c")
    _write(tmp_path / "docs" / ".hidden", b"h")
    _write(tmp_path / "docs" / ".git" / "x.md", b"x")
    _write(tmp_path / "docs" / "empty.md", b"")  # adds no text: skipped, not an error
    assert resolve_paths([str(a)]) == [a.resolve()]
    assert resolve_paths([str(tmp_path / "docs")]) == sorted([b.resolve(), c.resolve()])
    assert resolve_paths([str(tmp_path / "docs" / "*.md")]) == [b.resolve()]
    assert resolve_paths([str(tmp_path / "**" / "*.md")]) == sorted([b.resolve(), c.resolve()])
    both = resolve_paths([str(b), str(a), str(tmp_path / "docs" / "*.md")])
    assert both == sorted([a.resolve(), b.resolve()])  # sorted and de-duplicated
    assert resolve_paths(str(a)) == [a.resolve()]  # a bare string is one path, not characters


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("missing.txt", "no such file or directory: '.*missing.txt'"),
        ("*.nothing", "glob pattern '.*nothing' matches no non-empty files"),
        ("empty.txt", "empty.txt' is empty"),
        ("emptydir", "directory '.*emptydir' contains no non-empty files"),
    ],
)
def test_resolve_paths_errors(tmp_path: Path, pattern: str, message: str) -> None:
    _write(tmp_path / "empty.txt", b"")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(BitLMError, match=message):
        resolve_paths([str(tmp_path / pattern)])


def test_resolve_paths_nothing_given() -> None:
    with pytest.raises(BitLMError, match="no text files given"):
        resolve_paths([])


# --- byte store --------------------------------------------------------------------------------


def test_store_from_files_is_exact_concatenation(tmp_path: Path) -> None:
    _write(tmp_path / "t" / "1.txt", b"one\n")
    _write(tmp_path / "t" / "2.txt", b"two")  # no trailing newline: one is added
    _write(tmp_path / "t" / "3.bin", bytes(range(256)))
    store = ByteStore.from_paths([str(tmp_path / "t")], cache_dir=tmp_path / "c")
    assert bytes(store.data) == b"one\ntwo\n" + bytes(range(256)) + b"\n"
    assert len(store) == len(store.data)
    assert [Path(s).name for s in store.sources] == ["1.txt", "2.txt", "3.bin"]
    assert not store.data.flags.writeable


def test_store_cache_is_reused_and_rebuilt_on_change(tmp_path: Path) -> None:
    text = _write(tmp_path / "a.txt", b"hello")
    cache = tmp_path / "c"
    first = ByteStore.from_paths([str(text)], cache_dir=cache)
    built_at = first.path.stat().st_mtime_ns
    second = ByteStore.from_paths([str(text)], cache_dir=cache)
    assert second.path == first.path
    assert second.path.stat().st_mtime_ns == built_at
    assert sorted(p.name for p in cache.iterdir()) == [first.path.name]  # no temp files left
    text.write_bytes(b"hello, world")
    os.utime(text, ns=(built_at + 10**9, built_at + 10**9))
    third = ByteStore.from_paths([str(text)], cache_dir=cache)
    assert third.path != first.path
    assert bytes(third.data) == b"hello, world\n"


def test_interrupted_cache_build_leaves_nothing(tmp_path: Path) -> None:
    def crash() -> Iterator[bytes]:
        yield b"partial"
        raise KeyboardInterrupt

    target = tmp_path / "c" / "key.u8"
    target.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, crash())
    assert list(target.parent.iterdir()) == []


def test_store_from_corpus_uses_default_cache_dir(_cache_in_tmp: Path) -> None:
    store = ByteStore.from_corpus("pydoc")
    assert store.path.parent == _cache_in_tmp
    assert store.path.suffix == ".u8"
    assert bytes(store.data) == load_corpus("pydoc")
    assert store.sources == ["pydoc"]
    assert ByteStore.from_corpus("pydoc").path == store.path


def test_store_pickles_by_path(tmp_path: Path) -> None:
    store = ByteStore.from_paths([str(_write(tmp_path / "a.txt", b"x" * 1000))], tmp_path)
    blob = pickle.dumps(store)
    assert len(blob) < 500
    copy = pickle.loads(blob)
    assert bytes(copy.data) == bytes(store.data)
    assert copy.sources == store.sources


def test_default_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITLM_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("BITLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "bitlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "bitlm"


# --- datamodule --------------------------------------------------------------------------------


def test_datamodule_pydoc_batches(tmp_path: Path) -> None:
    dm = BitDataModule(seq_len=1152, batch_size=4, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 1152)
    assert batch.dtype == torch.uint8
    assert (batch.view(4, -1, 9).sum(-1) % 2 == 0).all()  # every frame has even parity
    first = [b.clone() for b in dm.val_dataloader()]
    second = list(dm.val_dataloader())
    assert len(first) == len(second) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert dm.hparams.corpus == "pydoc"


def test_datamodule_paths_take_precedence(tmp_path: Path) -> None:
    text = _write(tmp_path / "a.txt", b"abcdefghij" * 1000)
    dm = BitDataModule(
        corpus="pydoc", paths=[str(text)], seq_len=90, batch_size=2, split_chunk_bytes=100
    )
    dm.setup("fit")
    assert dm.store is not None
    assert dm.store.sources == [str(text.resolve())]
    assert next(iter(dm.train_dataloader())).shape == (2, 90)


def test_datamodule_text_shorter_than_window(tmp_path: Path) -> None:
    text = _write(tmp_path / "a.txt", b"short text")  # 10 bytes + the newline that ends it
    dm = BitDataModule(corpus=None, paths=[str(text)], seq_len=1152)
    needed = min_bytes_for_split(128, 0.05, 128)  # chunks shrink to one window for short text
    assert needed == 2560
    with pytest.raises(BitLMError, match=f"has 11 bytes.*the {needed} needed.*max_seq_len"):
        dm.setup("fit")


def test_datamodule_short_text_still_gets_a_validation_split(tmp_path: Path) -> None:
    text = _write(tmp_path / "a.txt", bytes(range(32, 127)) * 40)  # 3800 bytes
    dm = BitDataModule(
        corpus=None, paths=[str(text)], seq_len=288, batch_size=4, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    assert dm.chunk_bytes(3800) == 3800 // 20
    assert len(dm.val_set) >= 1 and len(dm.train_set) >= 4


@pytest.mark.parametrize(("seq_len", "nearest"), [(1150, "1143 or 1152"), (0, "try 9")])
def test_datamodule_rejects_seq_len_not_multiple_of_9(seq_len: int, nearest: str) -> None:
    with pytest.raises(BitLMError, match=f"data.seq_len .*multiple of 9.*got {seq_len}.*{nearest}"):
        BitDataModule(seq_len=seq_len)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corpus": None, "paths": None}, "no training text"),
        ({"corpus": None, "paths": []}, "no training text"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"val_fraction": 0.9}, "val_fraction=0.9"),
        ({"seq_len": 9 * 200, "split_chunk_bytes": 100}, "split_chunk_bytes=100"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(BitLMError, match=message):
        BitDataModule(**kwargs)


def test_datamodule_unknown_corpus(tmp_path: Path) -> None:
    with pytest.raises(BitLMError, match="unknown corpus"):
        BitDataModule(corpus="nope", cache_dir=str(tmp_path)).prepare_data()


def test_write_atomic_gives_usual_permissions_and_accepts_bytes_like(tmp_path) -> None:
    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", bytearray(b"{}"))
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert list(tmp_path.iterdir()) == [tmp_path / "a.json"]  # no temporary file left behind
