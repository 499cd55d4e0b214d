"""Numeric precision of a run: Lightning's precision for ``auto``, and float32 matmul precision."""

from __future__ import annotations

from pathlib import Path

import torch

from bitlm.core.errors import BitLMError

MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(precision: str) -> None:
    """``torch.set_float32_matmul_precision``, refusing a value torch does not know."""
    if precision not in MATMUL_PRECISIONS:
        raise BitLMError(
            f"float32_matmul_precision={precision!r}: choose one of {', '.join(MATMUL_PRECISIONS)}"
        )
    torch.set_float32_matmul_precision(precision)


def resolve_precision(precision: str) -> str:
    """``auto`` → ``bf16-mixed`` where bf16 is fast (a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 / AMX), else ``32-true``; any other value is passed to Lightning unchanged."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if _cpu_has_fast_bf16() else "32-true"


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, and fp32 is always correct
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
