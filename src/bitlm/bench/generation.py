"""generate: sampling speed, single stream and batched, at several context lengths.

For each context, ``new_bytes`` are sampled after a prompt of that many bits (whole frames) for
``batch_sizes`` prompts decoded together (``generate_many``; distinct prompts of equal length,
each with its own seed), and the aggregate bytes/s is reported with its ratio to batch 1.
``uncached=true`` adds the reference that re-encodes the whole window for every step
(``kv_cache=False``) at batch 1, and the cache's speed-up over it. The model is untrained: speed
does not depend on the weights. Its window is widened to hold context + new bytes, so that no
decoder ever cuts its context and each does exactly the work its name says."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bitlm.bench.measure import corpus_bytes, median, timings
from bitlm.core.bits import FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, generate_many
from bitlm.model import build_model
from bitlm.model.config import ModelConfig


def run(
    config: ModelConfig,
    device: torch.device,
    contexts: list[int],
    new_bytes: int,
    repeats: int,
    seed: int,
    batch_sizes: list[int],
    uncached: bool,
    progress=None,
) -> dict[str, Any]:
    if config.unit != "bit":
        raise BitLMError("bitlm-bench generate measures bit models (model.unit=bit)")
    window = (max(contexts) // FRAME_BITS + new_bytes + 2) * FRAME_BITS
    config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, window))
    torch.manual_seed(seed)
    model = build_model(config).to(device).eval()
    results: dict[int, dict[str, Any]] = {}
    for context in contexts:
        row: dict[str, Any] = {"context_bits": FRAME_BITS * (context // FRAME_BITS)}
        for batch in batch_sizes:
            row[f"batch_{batch}"] = _measure(model, context, new_bytes, batch, True, repeats, seed)
            if progress:
                progress(f"{context} bits of context, batch {batch}: {row[f'batch_{batch}']}")
        single = row[f"batch_{batch_sizes[0]}"]["bytes_per_s"]
        row["batch_speedup"] = {
            str(b): row[f"batch_{b}"]["bytes_per_s"] / single for b in batch_sizes
        }
        if uncached:
            row["uncached"] = _measure(model, context, new_bytes, 1, False, repeats, seed)
            row["cache_speedup"] = row["batch_1"]["bytes_per_s"] / row["uncached"]["bytes_per_s"]
        results[context] = row
    return {
        "new_bytes": new_bytes,
        "max_seq_len": config.max_seq_len,
        "trunk": config.trunk,
        "batch_sizes": batch_sizes,
        "repeats": repeats,
        "results": results,
    }


def _measure(
    model, context: int, new_bytes: int, batch: int, cached: bool, repeats: int, seed: int
) -> dict[str, float]:
    """Aggregate bytes/s of ``batch`` prompts of ``context`` bits (each a different stretch of
    the corpus, with its own seed) continued by ``new_bytes`` each, the median of ``repeats``
    calls after one warm-up; end to end, so it includes each prompt's prefill."""
    n = context // FRAME_BITS
    corpus = corpus_bytes(n * (batch + 1))
    prompts = [corpus[i * n : (i + 1) * n] for i in range(batch)]
    options = [GenerationOptions(seed=seed + i, kv_cache=cached) for i in range(batch)]
    device = model.head.weight.device
    seconds = median(
        timings(lambda: generate_many(model, prompts, new_bytes, options), repeats, 1, device)
    )
    return {"bytes_per_s": batch * new_bytes / seconds, "seconds": seconds}
