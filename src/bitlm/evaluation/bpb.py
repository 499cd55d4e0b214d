"""Held-out bits per byte of a model on arbitrary bytes, and compressor references.

Sliding-window scoring: windows of ``W = max_seq_len / 9`` bytes advance by ``S`` bytes; the
first window scores all its bytes, every later one only its last ``S`` bytes, which it predicts
with at least ``W − S`` bytes of context. Every byte is scored exactly once::

    bpb = Σ_bytes Σ_{8 data bits} −log2 p(bit | preceding bits) / #bytes

For text shorter than a window a single window covers it all.

A diffusion model has no next-bit likelihood: its bpb is the any-order upper bound
(``bitlm.objectives.denoising.elbo_bits``) over consecutive non-overlapping windows, and
``denoising_metrics`` reports how well it restores bits masked at fixed noise levels.
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

from bitlm.core.bits import bytes_to_bits
from bitlm.model.noise import bit_mask, mask_exactly, masked_logits, units_of
from bitlm.model.transformer import evaluating
from bitlm.objectives.denoising import denoising_stats, elbo_bits
from bitlm.objectives.losses import causal_loss


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
    seed: int = 0,
) -> float:
    """Total cross-entropy in bits of ``data`` under a bit or byte-level model (divide by
    ``len(data)`` for bpb). ``stride_bytes`` defaults to half the context. For a diffusion
    model: the upper bound ``diffusion_bits`` (seeded with ``seed``; no stride)."""
    if model.config.mode == "diffusion":
        return diffusion_bits(model, data, batch_size, progress, seed)
    window = model.config.max_bytes
    windows = sliding_windows(len(data), window, stride_bytes or max(1, window // 2))
    byte_tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with evaluating(model):
        return sum(
            _batch_bits(model, byte_tensor, windows[i : i + batch_size])
            for i in _progress(range(0, len(windows), batch_size), progress)
        )


def _progress(batches: range, progress: bool) -> tqdm:
    """A progress bar over batches on stderr, shown only on a terminal."""
    disable = None if progress else True  # None: only on a terminal
    return tqdm(batches, desc="scoring", unit="batch", disable=disable, file=sys.stderr)


def _batch_bits(model: nn.Module, data: torch.Tensor, windows: list[tuple[int, int]]) -> float:
    """Scored cross-entropy bits of a batch of equally long windows ``(start, first_scored)``."""
    device = next(model.parameters()).device
    length = min(model.config.max_bytes, len(data))
    bits = torch.stack([bytes_to_bits(data[s : s + length]) for s, _ in windows]).to(device)
    _, byte_bits = causal_loss(model, bits)  # (B, length)
    return sum(
        float(byte_bits[j, first - start :].sum()) for j, (start, first) in enumerate(windows)
    )


def _window_batches(data: bytes, window: int, batch_size: int) -> list[torch.Tensor]:
    """``data`` cut into consecutive windows of ``window`` bytes (the last may be shorter), as
    bit batches (B, 9·length) of at most ``batch_size`` equally long windows."""
    full = len(data) // window * window
    chunks = [data[i : i + window] for i in range(0, full, window)]
    batches = [chunks[i : i + batch_size] for i in range(0, len(chunks), batch_size)]
    if full < len(data):
        batches.append([data[full:]])
    return [torch.stack([bytes_to_bits(chunk) for chunk in batch]) for batch in batches]


@torch.no_grad()
def diffusion_bits(
    model: nn.Module, data: bytes, batch_size: int = 16, progress: bool = True, seed: int = 0
) -> float:
    """Upper bound in bits on −log2 p(data) under a diffusion model: the sum over consecutive
    windows of one ``elbo_bits`` sample each (an unbiased estimate of the bound)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    batches = _window_batches(data, model.config.max_bytes, batch_size)
    with evaluating(model):
        return sum(
            float(elbo_bits(model, batches[i].to(device), generator).sum())
            for i in _progress(range(len(batches)), progress)
        )


@torch.no_grad()
def denoising_metrics(
    model: nn.Module,
    data: bytes,
    noise_levels: list[float],
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """For each noise level ℓ: mask exactly round(ℓ · U) of the U units (bits or frames,
    ``diffusion_unit``) of every window (uniformly, seeded) and report, over the masked data
    bits, ``bit_accuracy`` (argmax) and ``loss`` (mean cross-entropy in bits per masked bit)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    batches = [b.to(device) for b in _window_batches(data, model.config.max_bytes, batch_size)]
    metrics = {}
    with evaluating(model):
        for level in noise_levels:
            ce = correct = count = 0.0
            for bits in batches:
                shape = torch.Size((bits.size(0), bits.size(1) // units_of(model.config)))
                n_masked = torch.full(shape[:1], round(level * shape[1]), device=device)
                masked = mask_exactly(shape, n_masked, generator, device)
                logits, _ = masked_logits(model, bits, masked)
                stats = denoising_stats(logits, bits, bit_mask(masked, model.config))
                ce, correct = ce + float(stats.ce_bits), correct + float(stats.correct)
                count += float(stats.count)
            metrics[f"{level:g}"] = {
                "bit_accuracy": correct / max(count, 1),
                "loss": ce / max(count, 1),
            }
    return metrics


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


def text_bpb(model: nn.Module, data: bytes) -> float:
    """Bits per byte of ``data`` under the model (``model_bits``' sliding windows, no progress
    bar): what ``bitlm-mcp``'s evaluate tool answers."""
    return model_bits(model, data, progress=False) / len(data)
