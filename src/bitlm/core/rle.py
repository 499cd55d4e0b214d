"""Run-length coding of bit tensors, with bit packing: the original's compressed-input path.

**Codec.** A bit tensor (any shape, values 0/1, read in row-major order) is cut into maximal runs
of equal bits; each run becomes a ``(value, count)`` pair, and a run longer than
``MAX_RUN = 255`` is split into pieces of 255 and a remainder, so every count fits one byte::

    0 0 0 1 1 0  →  values 0 1 0, counts 3 2 1
    300 × 1      →  values 1 1,   counts 255 45

The values are stored packed eight to a byte (``pack_bits``; 1 bit per run instead of 8), the
counts as ``uint8``: a compressed tensor costs ``R + ⌈R/8⌉`` bytes for ``R`` runs. Everything is
vectorised numpy (no loop per bit or per run: several hundred MB/s, ``bitlm-bench rle``); tensors
on an accelerator go through host memory and come back to their device.

**What it is good for.** Run-length coding pays off on data with long runs. The bits of text do
not have them: in 9-bit frames of English the mean run is under 2 bits, so a compressed batch is
*larger* than the 0/1 ``uint8`` tensor it encodes (``experiments/compression`` measures it).
``forward_compressed`` decodes and runs the ordinary forward, so training on compressed inputs
(``module.compress_prob``) computes exactly what raw training computes; it exercises and measures
the codec in the training loop, as the original did, and costs the encode/decode time.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from bitlm.core.errors import BitLMError

MAX_RUN = 255
"""Longest run one ``(value, count)`` pair holds: counts are stored as one byte."""


class CompressedBits(NamedTuple):
    """A run-length coded bit tensor: packed run values, run lengths, the original shape."""

    values: Tensor  # uint8 (⌈R/8⌉,): run values, packed by pack_bits
    counts: Tensor  # uint8 (R,): run lengths, 1..MAX_RUN
    shape: tuple[int, ...]

    @property
    def n_runs(self) -> int:
        return self.counts.numel()

    @property
    def nbytes(self) -> int:
        """Bytes the compressed form occupies (values + counts)."""
        return self.values.numel() + self.counts.numel()


def run_length_encode(bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(values, counts)``, both uint8 ``(R,)``, of the runs of ``bits`` flattened; runs longer
    than ``MAX_RUN`` are split. Runs start where a bit differs from its predecessor:
    ``starts = [0] ∪ {i : b_i ≠ b_{i−1}}``, ``length_r = starts_{r+1} − starts_r``."""
    flat = _host_bits(bits)
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.uint8)
        return _back(empty, bits), _back(empty, bits)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    lengths = np.diff(starts, prepend=0, append=flat.size)
    values, counts = _split_long_runs(flat[np.concatenate(([0], starts))], lengths)
    return _back(values, bits), _back(counts, bits)


def _split_long_runs(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut each run of length ``n`` into ``⌈n/255⌉`` pieces: 255, …, 255, then the rest."""
    pieces = (lengths + MAX_RUN - 1) // MAX_RUN
    if (pieces == 1).all():
        return values, lengths.astype(np.uint8)
    counts = np.full(int(pieces.sum()), MAX_RUN, dtype=np.int64)
    counts[np.cumsum(pieces) - 1] = lengths - MAX_RUN * (pieces - 1)
    return np.repeat(values, pieces), counts.astype(np.uint8)


def run_length_decode(values: Tensor, counts: Tensor) -> Tensor:
    """The flat uint8 bit tensor whose runs are ``(values, counts)``."""
    if values.shape != counts.shape:
        raise BitLMError(
            f"run-length values {tuple(values.shape)} and counts {tuple(counts.shape)} differ"
        )
    return _back(np.repeat(_host(values), _host(counts)), values)


def pack_bits(bits: Tensor) -> Tensor:
    """Eight bits to a byte, first bit most significant; the last byte is zero-padded.
    ``(n,)`` 0/1 → uint8 ``(⌈n/8⌉,)``."""
    return _back(np.packbits(_host_bits(bits)), bits)


def unpack_bits(packed: Tensor, n_bits: int) -> Tensor:
    """Inverse of ``pack_bits``: the first ``n_bits`` bits of ``packed`` as uint8 0/1."""
    if not 0 <= n_bits <= 8 * packed.numel():
        raise BitLMError(f"cannot unpack {n_bits} bits from {packed.numel()} bytes")
    return _back(np.unpackbits(_host(packed), count=n_bits), packed)


def compress_bits(bits: Tensor) -> CompressedBits:
    """Run-length code ``bits`` (any shape) and pack the run values."""
    values, counts = run_length_encode(bits)
    return CompressedBits(pack_bits(values), counts, tuple(bits.shape))


def decompress_bits(compressed: CompressedBits) -> Tensor:
    """The uint8 bit tensor ``compress_bits`` was given, in its shape."""
    values = unpack_bits(compressed.values, compressed.n_runs)
    bits = run_length_decode(values, compressed.counts)
    expected = 1
    for size in compressed.shape:
        expected *= size
    if bits.numel() != expected:
        raise BitLMError(
            f"corrupt compressed bits: the runs hold {bits.numel()} bits, the shape "
            f"{compressed.shape} needs {expected}"
        )
    return bits.view(compressed.shape)


def _host(tensor: Tensor) -> np.ndarray:
    """A flat uint8 numpy view (a copy for tensors off the CPU) of ``tensor``."""
    return tensor.detach().to("cpu", torch.uint8).reshape(-1).numpy()


def _host_bits(bits: Tensor) -> np.ndarray:
    """``_host(bits)``, refusing values other than 0 and 1 (a MASK symbol, say)."""
    if bits.numel() and (bool(bits.max() > 1) or bool(bits.min() < 0)):
        raise BitLMError("run-length coding takes bits (0/1 values) only")
    return _host(bits)


def _back(array: np.ndarray, like: Tensor) -> Tensor:
    """``array`` as a uint8 tensor on the device of ``like``."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)).to(like.device)
