"""Held-out bits per byte of a model on arbitrary bytes, and compressor references.

Sliding-window scoring: windows of ``W = max_seq_len / 9`` bytes advance by ``S`` bytes; the
first window scores all its bytes, every later one only its last ``S`` bytes, which it predicts
with at least ``W − S`` bytes of context. Every byte is scored exactly once::

    bpb = Σ_bytes Σ_{8 data bits} −log2 p(bit | preceding bits) / #bytes

For text shorter than a window a single window covers it all.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import sys
from collections.abc import Callable

import torch
import zstandard
from torch import nn
from tqdm import tqdm

from bitlm.bits import bytes_to_bits
from bitlm.model.transformer import evaluating


def sliding_windows(n_bytes: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, first_scored)`` byte offsets; every window is ``min(window, n_bytes)`` long.

    Window k ends at ``e_k = min(window + k·stride, n)`` (the last one exactly at n) and scores
    the bytes ``[e_{k−1}, e_k)``.
    """
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    length = min(window, n_bytes)
    windows, scored_until = [], 0
    while scored_until < n_bytes:
        end = min(scored_until + stride, n_bytes) if windows else length
        windows.append((end - length, scored_until))
        scored_until = end
    return windows


@torch.no_grad()
def model_bits(
    model: nn.Module,
    data: bytes,
    stride_bytes: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> float:
    """Total cross-entropy in bits of ``data`` under a bit or byte-level model (divide by
    ``len(data)`` for bpb). ``stride_bytes`` defaults to half the context."""
    window = model.config.max_bytes
    windows = sliding_windows(len(data), window, stride_bytes or max(1, window // 2))
    byte_tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    batches = tqdm(
        range(0, len(windows), batch_size),
        desc="scoring",
        unit="batch",
        disable=None if progress else True,  # None: only on a terminal
        file=sys.stderr,
    )
    with evaluating(model):
        return sum(_batch_bits(model, byte_tensor, windows[i : i + batch_size]) for i in batches)


def _batch_bits(model: nn.Module, data: torch.Tensor, windows: list[tuple[int, int]]) -> float:
    """Scored cross-entropy bits of a batch of equally long windows ``(start, first_scored)``."""
    device = next(model.parameters()).device
    length = min(model.config.max_bytes, len(data))
    bits = torch.stack([bytes_to_bits(data[s : s + length]) for s, _ in windows]).to(device)
    _, byte_bits = model.score(bits)  # (B, length)
    return sum(
        float(byte_bits[j, first - start :].sum()) for j, (start, first) in enumerate(windows)
    )


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip-9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bzip2-9": lambda data: bz2.compress(data, compresslevel=9),
    "xz-9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "zstd-19": lambda data: zstandard.ZstdCompressor(level=19).compress(data),
}
"""General-purpose compressors at their strongest common settings (``gzip -9``, ``bzip2 -9``,
``xz -9e``, ``zstd -19``)."""


def compressor_references(data: bytes) -> dict[str, float]:
    """Bits per byte of each compressor in ``COMPRESSORS`` on the same bytes:
    ``8·|compressed| / |data|``, container headers included, as a user would pay them."""
    return {name: 8 * len(compress(data)) / len(data) for name, compress in COMPRESSORS.items()}
