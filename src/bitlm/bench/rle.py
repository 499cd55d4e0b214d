"""rle: run-length coding of bit tensors (``bitlm.core.rle``) against a per-element Python
implementation of the same codec, in MB of ``uint8`` bit tensor per second; and what the codec
does to the size of text bits."""

from __future__ import annotations

from typing import Any

import torch

from bitlm.bench.measure import corpus_bytes, median, timings
from bitlm.core.bits import bytes_to_bits
from bitlm.core.rle import MAX_RUN, compress_bits, decompress_bits, run_length_encode


def reference_encode(bits: list[int]) -> list[tuple[int, int]]:
    """Bit by bit: extend the current run, or start a new one (at a change or at MAX_RUN)."""
    runs: list[tuple[int, int]] = []
    for bit in bits:
        if runs and runs[-1][0] == bit and runs[-1][1] < MAX_RUN:
            runs[-1] = (bit, runs[-1][1] + 1)
        else:
            runs.append((bit, 1))
    return runs


def reference_decode(runs: list[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for value, count in runs:
        out += [value] * count
    return out


def run(n_bytes: int, reference_bytes: int, repeats: int) -> dict[str, Any]:
    bits = bytes_to_bits(corpus_bytes(n_bytes))
    sample = bits[: reference_bytes * 9].tolist()
    compressed = compress_bits(bits)
    runs = reference_encode(sample)
    if not torch.equal(decompress_bits(compressed), bits) or reference_decode(runs) != sample:
        raise RuntimeError("run-length round trip failed")
    values, counts = run_length_encode(bits[: len(sample)])
    if list(zip(values.tolist(), counts.tolist(), strict=True)) != runs:
        raise RuntimeError("run_length_encode disagrees with the per-bit reference")

    def mb_per_s(fn, size: int) -> float:
        return size / 1e6 / median(timings(fn, repeats, warmup=1))

    results = {
        "bitlm": {
            "encode_mb_per_s": mb_per_s(lambda: compress_bits(bits), bits.numel()),
            "decode_mb_per_s": mb_per_s(lambda: decompress_bits(compressed), bits.numel()),
        },
        "reference": {
            "encode_mb_per_s": mb_per_s(lambda: reference_encode(sample), len(sample)),
            "decode_mb_per_s": mb_per_s(lambda: reference_decode(runs), len(sample)),
        },
    }
    for op in ("encode", "decode"):
        key = f"{op}_mb_per_s"
        results[f"{op}_speedup"] = results["bitlm"][key] / results["reference"][key]
    return {
        "bytes": n_bytes,
        "bits": bits.numel(),
        "repeats": repeats,
        "mean_run_bits": bits.numel() / compressed.n_runs,
        "compressed_over_bit_tensor": compressed.nbytes / bits.numel(),
        "compressed_over_packed_bits": compressed.nbytes / (bits.numel() / 8),
        "results": results,
    }
