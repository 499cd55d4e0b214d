"""Train/validation split of a byte stream, byte-window datasets, and collation into bits.

Split rule (deterministic, no randomness): cut the stream of ``n`` bytes into chunks of
``c = split_chunk_bytes`` (the last one may be shorter). With ``p = round(1 / val_fraction)``,
chunk ``k`` is validation iff ``k % p == p - 1`` (``val_fraction = 0.05`` -> every 20th chunk).
Runs of consecutive train chunks form contiguous train *segments* ``[start, end)``, and likewise
for validation. A window never crosses a segment boundary, so no validation byte ever appears in
a training window, and the split spreads validation text evenly over the whole stream.

Every byte offset is a valid window start for bits too, because one byte is one 9-bit frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bitlm.core.bits import bytes_to_bits
from bitlm.core.errors import BitLMError
from bitlm.data.store import ByteStore

Segment = tuple[int, int]
"""A half-open byte range ``(start, end)`` of the stream."""


def split_period(val_fraction: float) -> int:
    """Return ``p = round(1 / val_fraction)``: one chunk in every ``p`` is validation.

    ``val_fraction`` must lie in (0, 0.5] so that ``p >= 2`` and both parts are non-empty.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise BitLMError(
            f"val_fraction={val_fraction} must be in (0, 0.5]: e.g. 0.05 keeps every 20th chunk "
            "for validation"
        )
    return round(1.0 / val_fraction)


def split_segments(
    n_bytes: int, val_fraction: float = 0.05, chunk_bytes: int = 4096
) -> tuple[list[Segment], list[Segment]]:
    """Return ``(train_segments, val_segments)`` for a stream of ``n_bytes`` (see module doc).

    The pattern repeats every ``p`` chunks: ``p - 1`` train chunks, then one validation chunk,
    so the ``j``-th train segment is ``[j·p·c, (j·p + p − 1)·c)`` and the ``j``-th validation
    segment is ``[(j·p + p − 1)·c, (j + 1)·p·c)``, each clipped to ``n_bytes``; empty ones are
    dropped. Together they cover ``[0, n_bytes)`` exactly once.
    """
    if chunk_bytes < 1:
        raise BitLMError(f"split_chunk_bytes={chunk_bytes} must be a positive number of bytes")
    period = split_period(val_fraction)
    span = period * chunk_bytes
    train: list[Segment] = []
    val: list[Segment] = []
    for base in range(0, n_bytes, span):
        cut = min(base + span - chunk_bytes, n_bytes)
        train.append((base, cut))
        if cut < n_bytes:
            val.append((cut, min(base + span, n_bytes)))
    return train, val


def min_bytes_for_split(window_bytes: int, val_fraction: float, chunk_bytes: int) -> int:
    """Fewest stream bytes giving at least one train and one validation window.

    The first validation chunk starts at ``(p − 1)·c`` and must hold a whole window, so the
    answer is ``(p − 1)·c + window_bytes`` (assuming ``window_bytes <= c``; the first train
    segment, ``(p − 1)·c >= c`` bytes long, then holds a window as well).
    """
    return (split_period(val_fraction) - 1) * chunk_bytes + window_bytes


class _SegmentWindows(Dataset[torch.Tensor]):
    """Windows of ``window_bytes`` starting every ``stride`` bytes inside each segment.

    Segment ``j = [s_j, e_j)`` holds ``n_j = max(0, ⌊(e_j − s_j − w) / stride⌋ + 1)`` windows.
    With ``C`` the cumulative counts (``C_0 = 0``), index ``i`` lies in the segment ``j`` with
    ``C_j <= i < C_{j+1}`` (found by ``np.searchsorted``) and starts at
    ``s_j + (i − C_j)·stride``: O(#segments) memory, no per-window list.
    """

    def __init__(
        self,
        data: np.ndarray | ByteStore,
        segments: Sequence[Segment],
        window_bytes: int,
        stride: int,
    ) -> None:
        if window_bytes < 1:
            raise BitLMError(f"window_bytes={window_bytes} must be at least 1")
        self.data = data
        self._bytes = data.data if isinstance(data, ByteStore) else np.asarray(data)
        self.window_bytes = window_bytes
        self.stride = stride
        bounds = np.asarray(segments, dtype=np.int64).reshape(-1, 2)
        self._starts = bounds[:, 0]
        counts = np.maximum(0, (bounds[:, 1] - bounds[:, 0] - window_bytes) // stride + 1)
        self._cumulative = np.concatenate([[0], np.cumsum(counts)])

    def __len__(self) -> int:
        return int(self._cumulative[-1])

    def offset(self, index: int) -> int:
        """Return the byte offset at which window ``index`` starts."""
        return int(self.offsets(np.array([index]))[0])

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """Byte offsets at which windows ``indices`` (int64 array) start, vectorised."""
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"window index out of range for {len(self)} windows")
        segment = np.searchsorted(self._cumulative, indices, side="right") - 1
        return self._starts[segment] + (indices - self._cumulative[segment]) * self.stride

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return window ``index`` as a uint8 tensor of shape ``(window_bytes,)``."""
        start = self.offset(index)
        return torch.from_numpy(np.array(self._bytes[start : start + self.window_bytes]))

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        """Windows ``indices`` as one uint8 tensor ``(len(indices), window_bytes)``, read with one
        vectorised gather (the ``DataLoader`` fetches a whole batch through this)."""
        starts = self.offsets(np.asarray(indices, dtype=np.int64))
        return torch.from_numpy(self._bytes[starts[:, None] + np.arange(self.window_bytes)])


class TrainWindows(_SegmentWindows):
    """Every window that fits inside a train segment, one per byte offset (stride 1).

    Meant for a shuffled sampler: an epoch then visits every possible start once, in random
    order, instead of a fixed tiling that would always cut the text at the same places.
    """

    def __init__(
        self, data: np.ndarray | ByteStore, segments: Sequence[Segment], window_bytes: int
    ) -> None:
        super().__init__(data, segments, window_bytes, stride=1)


class ValWindows(_SegmentWindows):
    """Consecutive non-overlapping windows inside each validation segment (stride = window).

    Deterministic: the same bytes are scored on every evaluation; a segment's tail shorter
    than a window is not used.
    """

    def __init__(
        self, data: np.ndarray | ByteStore, segments: Sequence[Segment], window_bytes: int
    ) -> None:
        super().__init__(data, segments, window_bytes, stride=window_bytes)


def collate_bits(batch: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Byte windows, ``(n,)`` each or already stacked ``(B, n)``, as bits: uint8 ``(B, 9·n)``."""
    windows = batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
    return bytes_to_bits(windows)


def batch_size(bits: torch.Tensor) -> int:
    """Sequences in a collated batch (for Lightning's ThroughputMonitor)."""
    return bits.size(0)


def batch_bits(bits: torch.Tensor) -> int:
    """Bits in a collated batch: ThroughputMonitor's items/s is then bits/s."""
    return bits.numel()
