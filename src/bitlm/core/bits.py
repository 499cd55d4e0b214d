"""Bytes <-> bits in the 9-bit parity frame format that the models read and write.

Frame format
------------
Every byte becomes one 9-bit *frame*::

    [b7, b6, b5, b4, b3, b2, b1, b0, p]

the eight data bits most-significant first, followed by one EVEN parity bit
``p = b7 ^ b6 ^ ... ^ b0``, so that the sum of all nine bits of a valid frame is even.
A bit sequence always starts on a frame boundary and its length is a multiple of 9;
bit ``9 * i + k`` belongs to byte ``i``.  Bits are stored as ``torch.uint8`` tensors of 0/1.

Why a parity bit: a model that emits bits one at a time can produce a damaged frame.
The parity bit lets the decoder detect (not correct) any single flipped bit per frame,
and gives the model a fixed 9-bit period that marks byte boundaries.  Parity is the
integrity check of this format; UTF-8 validity is not (text is decoded with
``errors="replace"``), so any byte string, valid UTF-8 or not, round-trips exactly.

Everything here is vectorized: there is no Python loop per bit or per byte.  On the CPU, eight
frames are exactly 72 bits = 9 packed bytes, so the codec works on packed groups of eight frames
with numpy's ``packbits``/``unpackbits`` (``bitlm.core.bitpack``; several hundred MB/s,
``bitlm-bench codec`` measures it).  Tensors already on an accelerator are encoded there with a
256 x 9 lookup table.  Inputs are checked first (``bitlm.core.bitinput``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

from bitlm.core.bitinput import as_bit_tensor, byte_values
from bitlm.core.bitpack import DATA_BITS, FRAME_BITS, decode_packed, encode_packed
from bitlm.core.errors import BitLMError

__all__ = [
    "DATA_BITS",
    "FRAME_BITS",
    "FRAME_TABLE",
    "ParityError",
    "ParityMode",
    "bits_to_bytes",
    "bits_to_text",
    "bytes_to_bits",
    "decode_bits",
    "enforce_parity",
    "frame_values",
    "frames_in",
    "parity_error_frames",
    "text_to_bits",
]


def frames_in(n_bits: int, name: str) -> int:
    """Bytes in a configured length of ``n_bits`` bits, which must be a positive multiple of 9.

    Raises ``BitLMError`` naming the option ``name`` and the nearest valid lengths.
    """
    if isinstance(n_bits, int) and not isinstance(n_bits, bool):
        if n_bits > 0 and n_bits % FRAME_BITS == 0:
            return n_bits // FRAME_BITS
        below = n_bits // FRAME_BITS * FRAME_BITS
        nearest = f"{below} or {below + FRAME_BITS}" if below > 0 else str(FRAME_BITS)
    else:
        nearest = "576"
    raise BitLMError(
        f"{name} must be a positive multiple of {FRAME_BITS} (one byte = {FRAME_BITS} bits), "
        f"got {n_bits!r}; try {nearest}"
    )


ParityMode = Literal["strict", "repair", "replace"]
"""How decoding treats a frame whose parity fails (see :func:`decode_bits`)."""

_PARITY_MODES = ("strict", "repair", "replace")

# Shifts that pull out b7..b0 in that order, and the matching place values for decoding.
_SHIFTS = torch.arange(DATA_BITS - 1, -1, -1, dtype=torch.int64)
# uint8 is enough everywhere below: a byte's weighted bit sum is at most 255 and a frame's bit
# count at most 9, and uint8 arithmetic is several times faster than widening to int32/int64.
_WEIGHTS = torch.tensor([1 << s for s in range(DATA_BITS - 1, -1, -1)], dtype=torch.uint8)


def _build_frame_table() -> torch.Tensor:
    """Return the (256, 9) uint8 table whose row ``b`` is the frame of byte ``b``.

    Data bits are ``(b >> [7, 6, ..., 0]) & 1`` (most-significant first); the parity bit is
    the sum of the data bits mod 2 (their XOR), which makes the 9-bit sum even.
    """
    values = torch.arange(256, dtype=torch.int64)
    data = (values[:, None] >> _SHIFTS) & 1
    parity = data.sum(dim=1, keepdim=True) & 1
    return torch.cat([data, parity], dim=1).to(torch.uint8)


FRAME_TABLE: torch.Tensor = _build_frame_table()
"""uint8 tensor of shape (256, 9): row ``b`` is the 9-bit frame of byte ``b``."""


@functools.lru_cache(maxsize=16)
def _table_on(device: torch.device) -> torch.Tensor:
    """FRAME_TABLE on ``device``, cached so a collate on GPU does not re-upload it per batch."""
    return FRAME_TABLE.to(device)


@functools.lru_cache(maxsize=16)
def _weights_on(device: torch.device) -> torch.Tensor:
    """The place values [128, 64, ..., 1] (uint8) on ``device``."""
    return _WEIGHTS.to(device)


class ParityError(ValueError):
    """Some frames of a bit sequence failed their even-parity check.

    Attributes:
        bad_frames: the byte (frame) index of EVERY frame whose 9 bits have an odd sum,
            in increasing order.  The message lists at most the first 20 of them.
        n_frames: total number of frames in the decoded sequence, when known.
    """

    MAX_LISTED = 20

    def __init__(self, bad_frames: Iterable[int], n_frames: int | None = None) -> None:
        self.bad_frames: list[int] = [int(i) for i in bad_frames]
        self.n_frames = n_frames
        count = len(self.bad_frames)
        shown = ", ".join(str(i) for i in self.bad_frames[: self.MAX_LISTED])
        if count > self.MAX_LISTED:
            shown += f" … and {count - self.MAX_LISTED} more"
        of_total = f" of {n_frames}" if n_frames is not None else ""
        noun = "frame" if count == 1 and n_frames is None else "frames"  # "1 of 5 frames"
        super().__init__(
            f"{count}{of_total} {noun} failed the even-parity check (byte indices: {shown}); "
            'decode with errors="repair" or errors="replace" to accept them'
        )

    def __reduce__(self) -> tuple[type[ParityError], tuple[list[int], int | None]]:
        # Rebuild from the attributes (not the message) so pickling, e.g. across
        # DataLoader worker processes, keeps ``bad_frames`` intact.
        return (type(self), (self.bad_frames, self.n_frames))


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


def bytes_to_bits(
    data: bytes | bytearray | memoryview | np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """Encode bytes as 9-bit even-parity frames.

    Each byte ``b`` becomes ``FRAME_TABLE[b]`` = ``[b7 ... b0, b7 ^ ... ^ b0]``, so ``n`` bytes
    become ``9 * n`` bits, byte ``i`` occupying bits ``9*i .. 9*i + 8``.

    Args:
        data: bytes-like (gives a 1-D result), or a numpy array / torch tensor of byte values
            (uint8; other integer dtypes are accepted when every value is in 0..255) with any
            leading shape ``(..., n)``, e.g. a ``(B, n)`` batch in a DataLoader collate.

    Returns:
        ``torch.uint8`` tensor of 0/1 with shape ``(..., 9 * n)``, on the input tensor's device
        (CPU for bytes and numpy input).

    Raises:
        TypeError: ``data`` is not one of the accepted types (e.g. a ``str``).
        ValueError: wrong dtype (float/bool), a 0-d tensor, or a value outside 0..255.
    """
    values = byte_values(data)
    flat_values = values.reshape(-1)
    if values.device.type == "cpu":
        flat = torch.from_numpy(encode_packed(flat_values.numpy()))
    else:  # one table row per byte
        flat = _table_on(values.device).index_select(0, flat_values.long()).reshape(-1)
    return flat.reshape(*values.shape[:-1], values.shape[-1] * FRAME_BITS)


def text_to_bits(text: str) -> torch.Tensor:
    """Encode ``text`` as UTF-8, then as 9-bit frames (see :func:`bytes_to_bits`); 1-D uint8."""
    if not isinstance(text, str):
        raise TypeError(f"text_to_bits() takes str, got {type(text).__name__}")
    return bytes_to_bits(text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Validation and decoding
# --------------------------------------------------------------------------------------


def _bad_mask(frames: torch.Tensor) -> torch.Tensor:
    """Bool mask (..., n): True where the 9 bits of a frame have an odd sum (parity fails)."""
    return (frames.sum(dim=-1, dtype=torch.uint8) & 1).bool()


def _data_parity(frames: torch.Tensor) -> torch.Tensor:
    """Correct even-parity bit (..., n) of each frame's data bits: their sum mod 2 (XOR)."""
    return frames[..., :DATA_BITS].sum(dim=-1, dtype=torch.uint8) & 1


def parity_error_frames(bits: torch.Tensor) -> torch.Tensor:
    """Return the frame (byte) indices whose parity fails, as a 1-D int64 tensor.

    A frame ``[b7 ... b0, p]`` fails when ``b7 + ... + b0 + p`` is odd.  Indices are in
    increasing order and on the input's device.

    Args:
        bits: 1-D integer/bool tensor of 0/1 whose length is a multiple of 9.
    """
    frames = as_bit_tensor(bits, one_d=True)
    return torch.nonzero(_bad_mask(frames)).reshape(-1)


def enforce_parity(bits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Recompute every parity bit from its frame's data bits.

    Useful after sampling bits from a model: the data bits are kept as generated and each
    parity bit is set to the XOR of its 8 data bits, so the result always decodes strictly.

    Args:
        bits: integer/bool tensor of 0/1 with shape ``(..., 9 * n)``; not modified.

    Returns:
        ``(fixed, changed)``: a new uint8 tensor of the same shape with valid parity
        everywhere, and the number of parity bits that had to change.
    """
    frames = as_bit_tensor(bits, one_d=False)
    fixed = frames.clone()
    parity = _data_parity(frames)
    changed = int((frames[..., DATA_BITS] != parity).sum())
    fixed[..., DATA_BITS] = parity
    return fixed.reshape(*frames.shape[:-2], -1), changed


def decode_bits(
    bits: torch.Tensor,
    errors: ParityMode = "strict",
    *,
    replacement: int = ord("?"),
) -> tuple[bytes, int]:
    """Decode a 1-D bit sequence of 9-bit frames back to bytes.

    Byte ``i`` is ``sum(bits[9*i + k] * 2**(7 - k) for k in 0..7)`` (data bits, MSB first);
    ``bits[9*i + 8]`` is its even-parity bit.

    Args:
        bits: 1-D integer/bool tensor of 0/1 whose length is a multiple of 9.
        errors: what to do with a frame whose parity fails:
            ``"strict"`` raises :class:`ParityError` listing every bad frame;
            ``"repair"`` trusts the 8 data bits and keeps the byte (the parity bit is
            assumed to be the damaged one);
            ``"replace"`` substitutes ``replacement`` for each bad frame's byte.
        replacement: byte value (0..255) used by ``errors="replace"``; default ``ord("?")``.

    Returns:
        ``(data, bad)``: the decoded bytes and the number of frames whose parity failed
        (always 0 in strict mode, which raises instead).

    Raises:
        ParityError: ``errors="strict"`` and at least one frame fails its parity check.
        ValueError: invalid ``errors``/``replacement``, or malformed ``bits`` (not 1-D, length
            not a multiple of 9, values other than 0/1, float dtype).
    """
    if errors not in _PARITY_MODES:
        raise ValueError(f"errors must be one of {', '.join(_PARITY_MODES)}; got {errors!r}")
    if errors == "replace" and not (
        isinstance(replacement, int)
        and not isinstance(replacement, bool)
        and 0 <= replacement <= 255
    ):
        raise ValueError(f"replacement must be a byte value in 0..255, got {replacement!r}")
    frames = as_bit_tensor(bits, one_d=True)
    # decoded on the CPU: the result is host bytes anyway (the bits of one sequence are small)
    values, bad = decode_packed(frames.reshape(-1).cpu().numpy())
    bad_frames = np.flatnonzero(bad)
    if bad_frames.size and errors == "strict":
        raise ParityError(bad_frames.tolist(), n_frames=values.size)
    if bad_frames.size and errors == "replace":
        values[bad] = replacement
    return values.tobytes(), int(bad_frames.size)


def _frame_values(frames: torch.Tensor) -> torch.Tensor:
    """Byte = dot(data bits, [128, 64, ..., 1]); exact in uint8 since the sum is at most 255."""
    return (frames[..., :DATA_BITS] * _weights_on(frames.device)).sum(dim=-1, dtype=torch.uint8)


def frame_values(bits: torch.Tensor) -> torch.Tensor:
    """Byte values (..., n) uint8 of bits (..., 9n), from the data bits alone (parity is not
    checked): how a byte-level model reads the same bit windows as the bit model."""
    return _frame_values(as_bit_tensor(bits, one_d=False))


def bits_to_bytes(bits: torch.Tensor) -> bytes:
    """Strictly decode 1-D bits to bytes: ``decode_bits(bits, "strict")[0]``.

    Raises:
        ParityError: if any frame fails its parity check (all bad frames are listed).
    """
    data, _ = decode_bits(bits, "strict")
    return data


def bits_to_text(
    bits: torch.Tensor,
    errors: ParityMode = "strict",
    *,
    replacement: int = ord("?"),
) -> str:
    """Decode 1-D bits to bytes (parity handled per ``errors``, see :func:`decode_bits`),
    then to text as UTF-8 with ``errors="replace"``.

    A model may emit byte sequences that are not valid UTF-8; parity, not UTF-8 validity,
    is the integrity check of this format, so invalid UTF-8 becomes U+FFFD instead of an error.
    """
    data, _ = decode_bits(bits, errors, replacement=replacement)
    return data.decode("utf-8", errors="replace")
