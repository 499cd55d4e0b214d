"""attention: query-chunked against unchunked causal attention, one layer, forward + backward.

Each (length, chunk size) runs in a fresh process: after one warm-up step, the peak memory of
one step (see :func:`bitlm.bench.measure.peak_memory`), then the median step time. The
unchunked layer uses SDPA's fused causal kernel; a chunk after the first needs an explicit
(chunk × keys) mask, so chunking bounds the score matrix only where SDPA would otherwise
materialise it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bitlm.bench.measure import in_fresh_process, median, peak_memory, timings
from bitlm.model.attention import RotaryEmbedding, SelfAttention
from bitlm.model.config import ModelConfig


def measure_attention(
    config: dict[str, Any], length: int, batch_size: int, device: str, repeats: int, seed: int
) -> dict[str, float]:
    torch.manual_seed(seed)
    device_ = torch.device(device)
    model_config = ModelConfig.from_dict(config)
    layer = SelfAttention(model_config).to(device_)
    rotary = RotaryEmbedding(model_config.head_dim, model_config.rope_base).to(device_)
    x = torch.randn(batch_size, length, model_config.d_model, device=device_, requires_grad=True)
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)

    def step() -> None:
        x.grad = None
        layer(x, rotary(0, length), causal=True).square().mean().backward()

    step()  # warm-up
    peak = peak_memory(step, device_)
    return {"peak_bytes": peak, "seconds": median(timings(step, repeats, 0, device_))}


def run(
    config: ModelConfig,
    device: torch.device,
    lengths: list[int],
    chunk_size: int,
    batch_size: int,
    repeats: int,
    seed: int,
    progress=None,
) -> dict[str, Any]:
    results: dict[int, dict[str, Any]] = {}
    for length in lengths:
        row = {}
        for name, chunk in (("unchunked", None), ("chunked", chunk_size)):
            fields = {**dataclasses.asdict(config), "attn_chunk_size": chunk}
            row[name] = in_fresh_process(
                measure_attention, fields, length, batch_size, str(device), repeats, seed
            )
            if progress:
                progress(f"{length} bits, {name}: {row[name]}")
        row["time_chunked_vs_unchunked"] = row["chunked"]["seconds"] / row["unchunked"]["seconds"]
        row["memory_chunked_vs_unchunked"] = row["chunked"]["peak_bytes"] / max(
            1, row["unchunked"]["peak_bytes"]
        )
        results[length] = row
    return {
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "results": results,
    }
