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
with numpy's ``packbits``/``unpackbits`` (several hundred MB/s; ``bitlm-bench codec`` measures
it).  Tensors already on an accelerator are encoded there with a 256 x 9 lookup table.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

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

FRAME_BITS = 9
"""Bits per frame: 8 data bits + 1 even parity bit."""

DATA_BITS = 8
"""Data bits per frame (one byte), most-significant bit first."""


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


def _byte_values(data: object) -> torch.Tensor:
    """Validate ``data`` as bytes and return it as a uint8 tensor (shape kept, device kept)."""
    if isinstance(data, str):
        raise TypeError("bytes_to_bits() takes bytes, not str; use text_to_bits() for text")
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
            view = memoryview(view.tobytes())
        return torch.from_numpy(np.frombuffer(view, dtype=np.uint8).copy())  # writable
    if isinstance(data, np.ndarray):
        if data.dtype == np.bool_ or not np.issubdtype(data.dtype, np.integer):
            raise ValueError(
                f"byte array must have an integer dtype (uint8), got numpy dtype {data.dtype}"
            )
        array = np.ascontiguousarray(data)  # copies reversed or strided views
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    elif isinstance(data, torch.Tensor):
        if data.dtype == torch.bool or data.dtype.is_floating_point or data.dtype.is_complex:
            raise ValueError(f"byte tensor must have an integer dtype (uint8), got {data.dtype}")
        tensor = data
    else:
        raise TypeError(
            "bytes_to_bits() accepts bytes, bytearray, memoryview, a numpy uint8 array or a "
            f"torch uint8 tensor, got {type(data).__name__}"
        )
    if tensor.dim() == 0:
        raise ValueError("byte tensor must have at least one dimension (..., n), got a scalar")
    if tensor.dtype == torch.uint8:
        return tensor
    wide = tensor.to(torch.int64)  # also covers uint16/32/64, which lack some kernels
    out_of_range = (wide < 0) | (wide > 255)
    if wide.numel() > 0 and bool(out_of_range.any()):
        where = tuple(torch.nonzero(out_of_range)[0].tolist())
        raise ValueError(
            f"byte values must be in 0..255, found {int(wide[where])} at index {where}"
        )
    return wide.to(torch.uint8)


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
    values = _byte_values(data)
    flat_values = values.reshape(-1)
    if values.device.type == "cpu":
        flat = torch.from_numpy(_encode_packed(flat_values.numpy()))
    else:  # one table row per byte
        flat = _table_on(values.device).index_select(0, flat_values.long()).reshape(-1)
    return flat.reshape(*values.shape[:-1], values.shape[-1] * FRAME_BITS)


_BLOCK_FRAMES = 1 << 18
"""Frames per block of the CPU codec: large enough to amortise numpy's per-call cost, small
enough that the temporaries stay in cache (about twice as fast as one pass over 16 MB)."""


def _encode_packed(values: np.ndarray) -> np.ndarray:
    """Frames of byte ``values`` (n,) uint8 as a flat 0/1 uint8 array (9n,), block by block."""
    out = np.empty(FRAME_BITS * values.size, np.uint8)
    for start in range(0, values.size, _BLOCK_FRAMES):
        block = values[start : start + _BLOCK_FRAMES]
        out[FRAME_BITS * start : FRAME_BITS * (start + block.size)] = _encode_block(block)
    return out


def _decode_packed(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte values (n,) uint8 and parity-failure mask (n,) of flat frame bits (9n,)."""
    n = bits.size // FRAME_BITS
    values, bad = np.empty(n, np.uint8), np.empty(n, np.bool_)
    for start in range(0, n, _BLOCK_FRAMES):
        stop = min(n, start + _BLOCK_FRAMES)
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


def text_to_bits(text: str) -> torch.Tensor:
    """Encode ``text`` as UTF-8, then as 9-bit frames (see :func:`bytes_to_bits`); 1-D uint8."""
    if not isinstance(text, str):
        raise TypeError(f"text_to_bits() takes str, got {type(text).__name__}")
    return bytes_to_bits(text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Validation and decoding
# --------------------------------------------------------------------------------------


def _as_bit_tensor(bits: object, *, one_d: bool) -> torch.Tensor:
    """Validate ``bits`` and return it as a uint8 0/1 tensor of shape (..., n, 9) (frames).

    Accepts any integer or bool tensor (or numpy array) of 0/1 whose last dimension is a
    multiple of 9; floats are rejected, because a float "bit" (e.g. a probability) must be
    thresholded or sampled by the caller, not silently rounded here.
    """
    if isinstance(bits, np.ndarray):
        if bits.dtype != np.bool_ and not np.issubdtype(bits.dtype, np.integer):
            raise ValueError(f"bits must be an integer or bool array of 0/1, got {bits.dtype}")
        bits = torch.from_numpy(bits if bits.flags.writeable else bits.copy())
    if not isinstance(bits, torch.Tensor):
        raise TypeError(
            f"bits must be a torch tensor (or numpy array) of 0/1, got {type(bits).__name__}"
        )
    if bits.dtype.is_floating_point or bits.dtype.is_complex:
        raise ValueError(
            f"bits must be an integer or bool tensor of 0/1, got {bits.dtype}; "
            "threshold or sample float outputs first"
        )
    if one_d and bits.dim() != 1:
        raise ValueError(
            f"bits must be a 1-D tensor (decode one sequence at a time), "
            f"got shape {tuple(bits.shape)}"
        )
    if bits.dim() == 0:
        raise ValueError("bits must have at least one dimension (..., 9 * n), got a scalar")
    length = bits.shape[-1]
    if length % FRAME_BITS != 0:
        raise ValueError(
            f"bit length {length} is not a multiple of {FRAME_BITS}: "
            f"each byte is one {FRAME_BITS}-bit frame, so the length must be a multiple of 9"
        )
    if bits.dtype == torch.bool or bits.is_meta:  # a meta tensor has a shape, no values
        bits = bits.to(torch.uint8)
    elif bits.dtype != torch.uint8:
        wide = bits.to(torch.int64)  # also covers uint16/32/64, which lack some kernels
        invalid = (wide < 0) | (wide > 1)
        if wide.numel() > 0 and bool(invalid.any()):
            _raise_bad_value(wide, invalid)
        bits = wide.to(torch.uint8)
    elif bits.numel() > 0 and int(bits.max()) > 1:
        _raise_bad_value(bits, bits > 1)
    return bits.reshape(*bits.shape[:-1], length // FRAME_BITS, FRAME_BITS)


def _raise_bad_value(bits: torch.Tensor, invalid: torch.Tensor) -> None:
    where = tuple(torch.nonzero(invalid)[0].tolist())
    count = int(invalid.sum())
    at = where[0] if len(where) == 1 else where
    raise ValueError(
        f"bits must be 0 or 1, found {count} other value(s), the first {int(bits[where])} "
        f"at index {at}"
    )


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
    frames = _as_bit_tensor(bits, one_d=True)
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
    frames = _as_bit_tensor(bits, one_d=False)
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
    frames = _as_bit_tensor(bits, one_d=True)
    # decoded on the CPU: the result is host bytes anyway (the bits of one sequence are small)
    values, bad = _decode_packed(frames.reshape(-1).cpu().numpy())
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
    return _frame_values(_as_bit_tensor(bits, one_d=False))


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
