"""prepare and dataloader: the data pipeline against what it feeds and what it copies.

``prepare``: ``bitlm-prepare``'s MB/s on a text file of ``n_bytes``, against copying the same
file (``shutil.copyfile``: the disk's own read + write speed in this run), and the peak memory
of preparing in a fresh process (flat: it streams). ``dataloader``: batches/s of the training
``DataLoader`` reading a prepared folder through its memmap, against the optimiser steps/s of
the model it feeds (a plain training loop on the same batches): the loader must never be what
training waits for.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bitlm.bench.loops import TimedRun, plain_seconds
from bitlm.bench.measure import corpus_bytes, in_fresh_process, median, peak_memory, timings
from bitlm.data.prepare import file_sources, prepare
from bitlm.model.config import ModelConfig
from bitlm.training.datamodule import BitDataModule


def _write_text(path: Path, n_bytes: int) -> None:
    block = corpus_bytes(1 << 22)
    with path.open("wb") as handle:
        for start in range(0, n_bytes, len(block)):
            handle.write(block[: n_bytes - start])


def _prepare_once(source: Path, output: Path) -> None:
    prepare(file_sources([source]), output, overwrite=True, progress=False)


def _prepare_peak(source: str, output: str) -> int:
    return peak_memory(lambda: _prepare_once(Path(source), Path(output)), torch.device("cpu"))


def run_prepare(n_bytes: int, repeats: int, progress: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bitlm-bench-") as tmp:
        source, output, copy = Path(tmp) / "text.txt", Path(tmp) / "prepared", Path(tmp) / "copy"
        _write_text(source, n_bytes)
        progress(f"prepare: {n_bytes / 1e6:.0f} MB, {repeats} runs each")
        prepare_s = median(timings(lambda: _prepare_once(source, output), repeats))
        copy_s = median(timings(lambda: shutil.copyfile(source, copy), repeats))
        peak = in_fresh_process(_prepare_peak, str(source), str(output))
    return {
        "bytes": n_bytes,
        "repeats": repeats,
        "prepare_mb_per_s": n_bytes / 1e6 / prepare_s,
        "copy_mb_per_s": n_bytes / 1e6 / copy_s,
        "prepare_over_copy": copy_s / prepare_s,
        "peak_memory_mb": peak / 1e6,
        "peak_memory_over_input": peak / n_bytes,
    }


def run_dataloader(
    config: ModelConfig,
    device: torch.device,
    precision: str,
    batch_size: int,
    n_bytes: int,
    loader_batches: int,
    steps: int,
    num_workers: int,
    repeats: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bitlm-bench-") as tmp:
        source = Path(tmp) / "text.txt"
        _write_text(source, n_bytes)
        prepare(file_sources([source]), Path(tmp) / "prepared", progress=False)
        data = BitDataModule(
            path=str(Path(tmp) / "prepared"),
            seq_len=config.max_seq_len,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        data.setup("fit")
        progress(f"dataloader: {repeats} × {loader_batches} batches of {batch_size} from a memmap")
        seconds = [_read(data, loader_batches) for _ in range(repeats)]
        loader_s = median([s for s, _ in seconds]) / loader_batches
        batches = seconds[0][1]
        progress(f"training: {steps} steps of the model on the same batches")
        timed = TimedRun(config, batches[: steps + 2], precision, 2, device)
        train_s = plain_seconds(timed) / steps
    return {
        "repeats": repeats,
        "batch_size": batch_size,
        "seq_len": config.max_seq_len,
        "num_workers": num_workers,
        "loader_batches_per_s": 1 / loader_s,
        "training_steps_per_s": 1 / train_s,
        "loader_over_training": train_s / loader_s,
    }


def _read(data: BitDataModule, n: int) -> tuple[float, list[torch.Tensor]]:
    """Seconds to read ``n`` batches from a fresh training loader (its start-up and first batch
    not timed), and the batches."""
    loader = iter(data.train_dataloader())
    batches = [next(loader)]
    start = time.perf_counter()
    batches += [next(loader) for _ in range(n)]
    return time.perf_counter() - start, batches
