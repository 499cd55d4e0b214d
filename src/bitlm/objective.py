"""The language-modelling objective over bits, and bits per byte (bpb), the headline metric.

For logits (B, L, 2) and target bits (B, L) with L = 9·n, frame position ``t mod 9`` tells a data
bit (0–7) from the parity bit (8)::

    CE_t  = −log2 p(bit_t | context)                    (in bits)
    bpb   = Σ_{t data bit} CE_t / #bytes                 #bytes = #data bits / 8

Parity bits carry no information (they are a function of their frame's data bits), so they are
excluded from bpb, which makes it directly comparable with byte-level models and compressors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from bitlm.bits import DATA_BITS, FRAME_BITS


def data_bit_mask(length: int, device=None) -> Tensor:
    """Bool (length,): True at the 8 data-bit positions of each frame, False at parity bits."""
    return torch.arange(length, device=device) % FRAME_BITS < DATA_BITS


def bit_cross_entropy(
    logits: Tensor, bits: Tensor, include_parity: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Next-bit cross-entropy.

    Returns ``(loss, data_bits_ce, n_bytes)``: the mean CE in nats over the trained positions
    (data bits only unless ``include_parity``), the summed CE in bits over the data bits (for
    bpb; detached), and the number of bytes those data bits make up.
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), bits.long().flatten(), reduction="none")
    ce = ce.view(bits.shape)  # (B, L), nats
    data = data_bit_mask(bits.size(-1), bits.device).expand_as(ce).float()
    n_data = data.sum()
    data_ce = (ce * data).sum()  # masked sums, not boolean indexing: no host sync on GPU
    loss = ce.mean() if include_parity else data_ce / n_data
    return loss, data_ce.detach() / math.log(2), n_data / DATA_BITS


class BitsPerByte(Metric):
    """Running bpb = Σ CE(data bits, in bits) / Σ bytes, summed across batches and processes."""

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

    def update(self, ce_bits: Tensor, n_bytes: Tensor) -> None:
        # out of place: states reset under inference mode (trainer.validate) are inference
        # tensors, which refuse in-place updates once training resumes
        self.ce_bits = self.ce_bits + ce_bits.double()
        self.n_bytes = self.n_bytes + n_bytes.double()

    def compute(self) -> Tensor:
        return (self.ce_bits / self.n_bytes).float()
