"""generate: sampling speed with the key/value cache against re-encoding the whole context for
every bit (``kv_cache=False``), at several context lengths. The model is untrained: speed does
not depend on the weights. Its window is widened to hold context + new bytes, so that neither
decoder ever cuts its context and both do exactly the work their names say."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bitlm.bench.measure import corpus_bytes, median, timings
from bitlm.core.bits import FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, generate_bits
from bitlm.model import build_model
from bitlm.model.config import ModelConfig


def run(
    config: ModelConfig,
    device: torch.device,
    contexts: list[int],
    new_bytes: int,
    repeats: int,
    seed: int,
    progress=None,
) -> dict[str, Any]:
    if config.unit != "bit":
        raise BitLMError("bitlm-bench generate measures bit models (model.unit=bit)")
    window = (max(contexts) // FRAME_BITS + new_bytes + 2) * FRAME_BITS
    config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, window))
    torch.manual_seed(seed)
    model = build_model(config).to(device).eval()
    results: dict[int, dict[str, Any]] = {}
    for context in contexts:  # whole frames: the largest prompt that fits in `context` bits
        prompt = corpus_bytes(context // FRAME_BITS)
        row: dict[str, Any] = {"context_bits": FRAME_BITS * len(prompt)}
        for name, cached in (("cached", True), ("uncached", False)):
            options = GenerationOptions(seed=seed, kv_cache=cached)

            def sample(prompt: bytes = prompt, options: GenerationOptions = options) -> None:
                generate_bits(model, prompt, new_bytes, options)

            seconds = median(timings(sample, repeats, warmup=1, device=device))
            row[name] = {"bytes_per_s": new_bytes / seconds, "seconds": seconds}
            if progress:
                progress(f"{context} bits of context, {name}: {row[name]}")
        row["speedup"] = row["cached"]["bytes_per_s"] / row["uncached"]["bytes_per_s"]
        results[context] = row
    return {
        "new_bytes": new_bytes,
        "max_seq_len": config.max_seq_len,
        "repeats": repeats,
        "results": results,
    }
