"""Model FLOPs of a batch: what Lightning's ThroughputMonitor turns into FLOPs/s and MFU.

Counted by torch's ``FlopCounterMode`` (through Lightning's ``measure_flops``) on a copy of the
model built on the meta device: no memory is allocated and nothing is computed, so a 120 M
parameter model at 2 048 bytes of context is counted in well under a second, once per run.

The count is the *model* FLOPs of MFU as PaLM defines it (Chowdhery et al. 2022, appendix B):
forward + backward of the network as written, without the reversible stack's recomputed
forward (that work is real, but it is the price of the memory saving, not model arithmetic).
It covers every matmul and attention product; elementwise work (norms, activations,
the tree decoder's gathers) is not counted, as is usual. For a plain stack of N parameters
over T positions this is ≈ 6·N·T plus the attention's 12·L·d·T² / 2 (causal).
"""

from __future__ import annotations

import dataclasses

import torch
from lightning.fabric.utilities.throughput import measure_flops

from bitlm.model import build_model
from bitlm.model.blocks import ReversibleStack
from bitlm.model.config import ModelConfig
from bitlm.model.noise import masked_logits


def batch_flops(config: ModelConfig, batch_size: int, seq_len: int, training: bool) -> int:
    """FLOPs of one batch of ``batch_size`` windows of ``seq_len`` bits through a model of
    ``config``: forward and backward when ``training``, forward only otherwise. Callable
    anywhere, inside validation's inference mode too (a model grown there is counted again)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _count(config, batch_size, seq_len, training)


def _count(config: ModelConfig, batch_size: int, seq_len: int, training: bool) -> int:
    with torch.device("meta"):
        # ACT's halting is data-dependent (a meta tensor has no data): counted at full depth,
        # the budget every position may use, without the halting units' d → 1 projections
        model = build_model(dataclasses.replace(config, compile=False, use_act=False))
        bits = torch.zeros(batch_size, seq_len, dtype=torch.uint8)
    for module in model.modules():
        if isinstance(module, ReversibleStack):  # ordinary autograd: no recomputed forward
            module.memory_efficient = False
    model.train(training)

    def forward() -> torch.Tensor:
        if config.mode == "diffusion":  # one denoising pass
            return masked_logits(model, bits)[0]
        return model(bits)[0]

    if not training:
        with torch.no_grad():
            return measure_flops(model, forward)
    return measure_flops(model, forward, loss_fn=lambda logits: logits.float().sum())
