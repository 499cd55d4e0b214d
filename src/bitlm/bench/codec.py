"""codec: the 9-bit frame codec (``bytes_to_bits`` / ``bits_to_bytes``) against the obvious
per-byte Python implementation of the same format, in MB of bytes per second."""

from __future__ import annotations

from typing import Any

import torch

from bitlm.bench.measure import corpus_bytes, median, timings
from bitlm.core.bits import ParityError, bits_to_bytes, bytes_to_bits


def reference_encode(data: bytes) -> list[int]:
    """Per-byte: eight data bits, most significant first, then their XOR."""
    bits: list[int] = []
    for byte in data:
        frame = [(byte >> shift) & 1 for shift in range(7, -1, -1)]
        bits += [*frame, sum(frame) & 1]
    return bits


def reference_decode(bits: list[int]) -> bytes:
    """Per-frame: check the parity, then add up the data bits."""
    out = bytearray()
    for start in range(0, len(bits), 9):
        frame = bits[start : start + 9]
        if sum(frame) & 1:
            raise ParityError([start // 9])
        value = 0
        for bit in frame[:8]:
            value = value << 1 | bit
        out.append(value)
    return bytes(out)


def run(n_bytes: int, reference_bytes: int, repeats: int) -> dict[str, Any]:
    data = corpus_bytes(n_bytes)
    sample = data[:reference_bytes]
    bits = bytes_to_bits(data)
    sample_bits = reference_encode(sample)
    if bits_to_bytes(bits) != data or reference_decode(sample_bits) != sample:
        raise RuntimeError("codec round trip failed")
    if not torch.equal(bits[: len(sample_bits)], torch.tensor(sample_bits, dtype=torch.uint8)):
        raise RuntimeError("bytes_to_bits disagrees with the per-byte reference")

    def mb_per_s(fn, size: int, count: int) -> float:
        return size / 1e6 / median(timings(fn, count, warmup=1))

    results = {
        "bitlm": {
            "encode_mb_per_s": mb_per_s(lambda: bytes_to_bits(data), n_bytes, repeats),
            "decode_mb_per_s": mb_per_s(lambda: bits_to_bytes(bits), n_bytes, repeats),
        },
        "reference": {
            "encode_mb_per_s": mb_per_s(lambda: reference_encode(sample), reference_bytes, repeats),
            "decode_mb_per_s": mb_per_s(
                lambda: reference_decode(sample_bits), reference_bytes, repeats
            ),
        },
    }
    for op in ("encode", "decode"):
        key = f"{op}_mb_per_s"
        results[f"{op}_speedup"] = results["bitlm"][key] / results["reference"][key]
    return {
        "bytes": n_bytes,
        "reference_bytes": reference_bytes,
        "repeats": repeats,
        "results": results,
    }
