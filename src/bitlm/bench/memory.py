"""memory: training memory against depth for the reversible, plain and checkpointed stacks.

For each stack and depth, one fresh process builds the model and measures one training step
(forward + backward, gradients pre-allocated so that they are not counted):

- ``saved_bytes``: activation bytes autograd keeps between forward and backward (every tensor
  passed to ``save_for_backward``, distinct storages, parameters excluded). Exact and
  deterministic: this is the activation memory the targets speak of;
- ``peak_bytes``: how far memory rises during the step (CPU: peak resident set; CUDA:
  ``max_memory_allocated``), which adds the temporaries of forward and backward;
- ``step_seconds``: median time of a training step.

Ratios: each figure at every depth against the same stack at the smallest depth, and each stack's
step time against the plain stack's at the same depth.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from bitlm.bench.measure import corpus_batches, in_fresh_process, median, peak_memory, timings
from bitlm.core.errors import BitLMError
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.objectives.losses import causal_loss

STACKS = {
    "reversible": {"reversible": True, "activation_checkpointing": False},
    "plain": {"reversible": False, "activation_checkpointing": False},
    "checkpointed": {"reversible": False, "activation_checkpointing": True},
}
"""Stack name → the ModelConfig fields that select it."""


def saved_activation_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during one forward pass."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = causal_loss(model, batch)
    del loss
    return sum(saved.values())


def measure_step(
    config: dict[str, Any], batch_size: int, device: str, repeats: int, seed: int
) -> dict[str, Any]:
    """One stack at one depth; runs in a fresh process (see :func:`in_fresh_process`)."""
    torch.manual_seed(seed)
    device_ = torch.device(device)
    model = build_model(ModelConfig.from_dict(config)).to(device_).train()
    batch = corpus_batches(1, batch_size, config["max_seq_len"], seed)[0].to(device_)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def step() -> None:
        loss, _ = causal_loss(model, batch)
        loss.backward()

    saved = saved_activation_bytes(model, batch)
    step()  # warm-up: one-time allocations (kernels, caches) are not the step's memory
    peak = peak_memory(step, device_)
    return {
        "saved_bytes": saved,
        "peak_bytes": peak,
        "step_seconds": median(timings(step, repeats, warmup=0, device=device_)),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run(
    config: ModelConfig,
    device: torch.device,
    depths: list[int],
    stacks: list[str],
    batch_size: int,
    repeats: int,
    seed: int,
    progress=None,
) -> dict[str, Any]:
    unknown = sorted(set(stacks) - set(STACKS))
    if unknown:
        raise BitLMError(f"unknown stack(s) {unknown}: choose from {sorted(STACKS)}")
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for stack in stacks:
        results[stack] = {}
        for depth in depths:
            fields = {**dataclasses.asdict(config), **STACKS[stack], "n_layers": depth}
            results[stack][depth] = in_fresh_process(
                measure_step, fields, batch_size, str(device), repeats, seed
            )
            if progress:
                progress(f"{stack} × {depth} layers: {results[stack][depth]}")
    for by_depth in results.values():
        base = by_depth[min(depths)]
        for depth, row in by_depth.items():
            for key in ("saved_bytes", "peak_bytes"):
                row[f"{key}_vs_{min(depths)}_layers"] = row[key] / max(1, base[key])
            if "plain" in results:
                row["step_time_vs_plain"] = (
                    row["step_seconds"] / results["plain"][depth]["step_seconds"]
                )
    return {
        "repeats": repeats,
        "batch_size": batch_size,
        "seq_len": config.max_seq_len,
        "d_model": config.d_model,
        "results": results,
    }
