"""The CPU engine of ``bitlm.core.bits``: the 9-bit frame layout and its packed numpy codec.

Not an API of its own: ``bitlm.core.bits`` is the codec's public face (it re-exports
``FRAME_BITS`` and ``DATA_BITS``, defined here because the packed layout below depends on them)
and calls ``encode_packed`` / ``decode_packed`` for CPU tensors.

How: eight 9-bit frames are exactly 72 bits = 9 bytes, so a group of eight frames maps onto
nine packed bytes with fixed shifts (``_encode_block``), and numpy's ``packbits`` /
``unpackbits`` do the bit work in C, a block of ``BLOCK_FRAMES`` frames at a time.
"""

from __future__ import annotations

import numpy as np

FRAME_BITS = 9
"""Bits per frame: 8 data bits + 1 even parity bit."""

DATA_BITS = 8
"""Data bits per frame (one byte), most-significant bit first."""

BLOCK_FRAMES = 1 << 18
"""Frames per block of the CPU codec: large enough to amortise numpy's per-call cost, small
enough that the temporaries stay in cache (about twice as fast as one pass over 16 MB)."""


def encode_packed(values: np.ndarray) -> np.ndarray:
    """Frames of byte ``values`` (n,) uint8 as a flat 0/1 uint8 array (9n,), block by block."""
    out = np.empty(FRAME_BITS * values.size, np.uint8)
    for start in range(0, values.size, BLOCK_FRAMES):
        block = values[start : start + BLOCK_FRAMES]
        out[FRAME_BITS * start : FRAME_BITS * (start + block.size)] = _encode_block(block)
    return out


def decode_packed(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte values (n,) uint8 and parity-failure mask (n,) of flat frame bits (9n,)."""
    n = bits.size // FRAME_BITS
    values, bad = np.empty(n, np.uint8), np.empty(n, np.bool_)
    for start in range(0, n, BLOCK_FRAMES):
        stop = min(n, start + BLOCK_FRAMES)
        block = bits[FRAME_BITS * start : FRAME_BITS * stop]
        values[start:stop], bad[start:stop] = _decode_block(block)
    return values, bad


# Frame j (0..7) of a group of eight starts at bit 9j = 8j + j: bit j of packed byte j.
_GROUP_SHIFTS = np.arange(DATA_BITS, dtype=np.uint16)[:, None]


def _parity8(x: np.ndarray) -> np.ndarray:
    """XOR of the 8 low bits of each element (0 or 1), by folding halves onto each other."""
    x = x ^ (x >> 4)
    x ^= x >> 2
    x ^= x >> 1
    return x & 1


def _packed_groups(n: int, values: np.ndarray, width: int) -> np.ndarray:
    """Flat uint8 ``values`` describing ``n`` frames, zero-padded to ceil(n / 8) groups of
    ``width`` bytes and returned as a contiguous (width, groups) uint16 array: row j holds byte
    j of every group, so the per-position shifts below run over contiguous rows."""
    groups = -(-n // 8)
    padded = np.zeros(groups * width, np.uint8)
    padded[: values.size] = values
    return np.ascontiguousarray(padded.reshape(groups, width).T, dtype=np.uint16)


def _encode_block(values: np.ndarray) -> np.ndarray:
    """Frames of byte ``values`` (n,) as a flat 0/1 uint8 array (9n,).

    Frame j of a group is the 9-bit number ``F_j = value << 1 | parity``; MSB-first it fills
    bits j..7 of packed byte j (its top 8 - j bits) and bits 0..j of byte j + 1 (its low j + 1
    bits), so byte k = ``F_k >> (k+1) | (F_(k-1) << (8-k)) & 0xFF``; then ``np.unpackbits``.
    """
    frames = _packed_groups(values.size, values, DATA_BITS)  # (8, groups)
    frames = frames << 1 | _parity8(frames)
    packed = np.zeros((FRAME_BITS, frames.shape[1]), np.uint16)
    packed[:DATA_BITS] = frames >> (_GROUP_SHIFTS + 1)
    packed[1:] |= (frames << (DATA_BITS - 1 - _GROUP_SHIFTS)) & 0xFF
    stream = np.ascontiguousarray(packed.T, dtype=np.uint8).reshape(-1)
    return np.unpackbits(stream, count=FRAME_BITS * values.size)


def _decode_block(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte values (n,) and parity-failure mask (n,) of flat 0/1 frame bits (9n,) — the inverse
    of :func:`_encode_block`: ``value_j = (byte_j << j | byte_(j+1) >> (8-j)) & 0xFF`` and the
    parity bit is bit ``7 - j`` of byte j + 1."""
    n = bits.size // FRAME_BITS
    packed = _packed_groups(n, np.packbits(bits), FRAME_BITS)  # (9, groups)
    values = (packed[:DATA_BITS] << _GROUP_SHIFTS | packed[1:] >> (8 - _GROUP_SHIFTS)) & 0xFF
    parity = (packed[1:] >> (DATA_BITS - 1 - _GROUP_SHIFTS)) & 1
    bad = _parity8(values) != parity

    def flat(rows: np.ndarray, dtype) -> np.ndarray:
        return np.ascontiguousarray(rows.T, dtype=dtype).reshape(-1)[:n]

    return flat(values, np.uint8), flat(bad, np.bool_)
