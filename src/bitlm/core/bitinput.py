"""What ``bitlm.core.bits`` accepts, checked: byte values (bytes-likes, numpy arrays, tensors)
and 0/1 bits (integer or bool tensors and arrays), converted to the uint8 tensors its codec
works on, or refused with an error that says what was wrong and where.

Not an API of its own: the public functions of ``bitlm.core.bits`` call these first.
"""

from __future__ import annotations

import numpy as np
import torch

from bitlm.core.bitpack import FRAME_BITS


def byte_values(data: object) -> torch.Tensor:
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


def as_bit_tensor(bits: object, *, one_d: bool) -> torch.Tensor:
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
