"""What every benchmark shares: repeated timings reduced to medians, peak memory of one call
measured in a fresh process, corpus windows as bit batches, and a description of the machine.

Timings on shared machines are noisy (occasional 2–8× outliers), so every figure is the median of
``repeats`` runs after ``warmup`` untimed ones, and every target is a ratio against a reference
measured in the same run.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from bitlm.core.bits import FRAME_BITS, bytes_to_bits
from bitlm.data import load_corpus

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer measures work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | None = None
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_memory(step: Callable[[], Any], device: torch.device) -> int:
    """Bytes by which memory use rises above its level just before ``step``, at its peak.

    CUDA: ``max_memory_allocated`` after resetting the peak. CPU: the process's peak resident
    set (``VmHWM``), reset through ``/proc/self/clear_refs`` just before the call; run it in a
    fresh process (:func:`in_fresh_process`) so that memory freed earlier and kept by the
    allocator cannot hide part of the step's peak.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    base = _resident_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    step()
    return max(0, _resident_bytes("VmHWM") - base)


def _resident_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line: peak RSS needs Linux")
    return int(match.group(1)) * 1024


def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new spawned Python process (``fn`` must be importable).

    glibc is told to return every allocation of 64 KiB or more to the system when freed, so the
    resident-set peak of the child tracks what its tensors really occupy.
    """
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous


def corpus_batches(
    n_batches: int, batch_size: int, seq_len: int, seed: int = 0, corpus: str = "pydoc"
) -> list[torch.Tensor]:
    """``n_batches`` bit batches (batch_size, seq_len) of random windows of a built-in corpus."""
    data = np.frombuffer(load_corpus(corpus), dtype=np.uint8)
    n_bytes = seq_len // FRAME_BITS
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - n_bytes, size=(n_batches, batch_size))
    return [bytes_to_bits(np.stack([data[s : s + n_bytes] for s in row])) for row in starts]


def corpus_bytes(n_bytes: int, corpus: str = "pydoc") -> bytes:
    """The first ``n_bytes`` of a built-in corpus, repeated as needed."""
    data = load_corpus(corpus)
    return (data * (n_bytes // len(data) + 1))[:n_bytes]


def machine() -> dict[str, Any]:
    """Where a result was measured: CPU model and cores, GPU, torch version and threads."""
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()
