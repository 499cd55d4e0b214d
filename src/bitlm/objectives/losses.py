"""The language-modelling objective over bits, and bits per byte (bpb), the headline metric.

For logits (B, L, 2) and target bits (B, L) with L = 9·n, frame position ``t mod 9`` tells a data
bit (0–7) from the parity bit (8)::

    CE_t  = −log2 p(bit_t | context)                    (in bits)
    bpb   = Σ_{t data bit} CE_t / #bytes                 #bytes = #data bits / 8

Parity bits carry no information (they are a function of their frame's data bits), so they are
excluded from bpb, which makes it directly comparable with byte-level models and compressors: for
the byte-level baseline, a byte's CE is its 256-way cross-entropy in bits, the same quantity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from bitlm.core.bits import DATA_BITS, FRAME_BITS, frame_values
from bitlm.core.errors import BitLMError


def bit_cross_entropy(
    logits: Tensor, bits: Tensor, include_parity: bool = False, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Next-bit cross-entropy of logits (B, L, 2) against bits (B, L), L = 9·n.

    Returns ``(loss, byte_bits)``: the mean CE in nats over the trained positions (data bits
    only unless ``include_parity``), smoothed by ``label_smoothing`` (``smoothed_ce``), and the
    plain CE in bits of each byte, (B, n), summed over its 8 data bits (detached; bpb is its
    mean).
    """
    ce, trained = smoothed_ce(logits, bits, label_smoothing)
    frames, smooth = (x.view(*bits.shape[:-1], -1, FRAME_BITS) for x in (ce, trained))
    loss = smooth.mean() if include_parity else smooth[..., :DATA_BITS].mean()
    return loss, frames[..., :DATA_BITS].detach().sum(-1) / math.log(2)


def byte_cross_entropy(
    logits: Tensor, byte_values: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """256-way cross-entropy of logits (B, n, 256) against byte values (B, n).

    Returns ``(loss, byte_bits)`` as ``bit_cross_entropy`` does; the loss is in nats per byte.
    """
    ce, trained = smoothed_ce(logits, byte_values, label_smoothing)
    return trained.mean(), ce.detach() / math.log(2)


def smoothed_ce(logits: Tensor, targets: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Per position: the cross-entropy in nats, and the one trained with label smoothing ε::

        CE_ε = (1 − ε)·CE + ε·mean_k(−log p_k)        (k over the K classes: 2 for a bit)

    the cross-entropy against targets that put ε/K on every class (Szegedy et al. 2016). For a
    bit model it smooths each binary decision of the tree, not the 256-way byte distribution.
    Both (targets' shape)."""
    flat = logits.float().flatten(0, -2)
    ce = F.cross_entropy(flat, targets.long().flatten(), reduction="none").view(targets.shape)
    if not epsilon:  # the plain loss, computed exactly as before smoothing existed
        return ce, ce
    uniform = -F.log_softmax(flat, dim=-1).mean(-1).view(targets.shape)
    return ce, (1 - epsilon) * ce + epsilon * uniform


class BitsPerByte(Metric):
    """Running bpb = Σ CE (bits) / Σ bytes over per-byte CE tensors, across batches and ranks."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "ce_bits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "n_bytes", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, byte_bits: Tensor) -> None:
        # out of place: states reset under inference mode (trainer.validate) are inference
        # tensors, which refuse in-place updates once training resumes
        self.ce_bits = self.ce_bits + byte_bits.double().sum()
        self.n_bytes = self.n_bytes + byte_bits.numel()

    def compute(self) -> Tensor:
        return (self.ce_bits / self.n_bytes).float()


def causal_loss(
    model: nn.Module, bits: Tensor, include_parity: bool = False
) -> tuple[Tensor, Tensor]:
    """``(loss, CE in bits of each byte (B, n))`` of a causal model, bit or byte-level, on bits
    (B, 9n): what evaluation and the memory benchmark score. A diffusion model gives no
    next-bit likelihood (``bitlm.objectives.denoising.elbo_bits`` bounds its bpb instead)."""
    if model.config.mode != "causal":
        raise BitLMError(
            "a model.mode=diffusion model gives no next-bit likelihood to score; "
            "bitlm.objectives.denoising.elbo_bits bounds its bits per byte instead"
        )
    logits, _ = model(bits)
    if model.config.unit == "byte":
        return byte_cross_entropy(logits, frame_values(bits))
    return bit_cross_entropy(logits, bits, include_parity)
