"""The masked-denoising loss of diffusion mode and its likelihood bound.

**Why masking, not bit flipping.** A masked bit is *known* to be unknown, so the model spends no
capacity guessing which bits were corrupted, and unmasked bits are exact evidence. Masking is the
absorbing-state diffusion whose likelihood has a tractable bound (below), so a diffusion model's
bits per byte can be reported honestly. Flipping at rate 1/2 destroys a bit exactly as masking
does, but at lower rates it leaves the model to detect every flip from context first.

**Bound.** A masked-diffusion model is an any-order autoregressive model (unmask one bit at a
time in random order), so for a window of L bits (Uria et al. 2014; Hoogeboom et al. 2022)::

    −log p(x) ≤ E_σ Σ_t −log p_θ(x_σ(t) | x_σ(<t))
              = L · E_{m ~ U{1..L}} E_{|M| = m} [ (1/m) Σ_{i∈M} −log p_θ(x_i | x with M masked) ]

``elbo_bits`` estimates it with one mask per window (m stratified over the batch). Parity bits
are part of x; since p(data) = Σ_parity p(data, parity) ≥ p(data, parity(data)), the bound per
byte is an upper bound on the bits per byte of the data. It bounds the likelihood of the
one-bit-per-step sampler; the ``diffusion_steps``-step sampler below is an approximation of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from bitlm.core.bits import DATA_BITS, FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig
from bitlm.model.noise import (
    corrupt,
    corruption_rate,
    frame_predictions,
    mask_exactly,
    sample_noise_times,
)
from bitlm.model.transformer import MASK, TransformerLM
from bitlm.objectives.base import Knobs, Objective, Output
from bitlm.objectives.losses import BitsPerByte


def masked_cross_entropy(logits: Tensor, bits: Tensor, masked: Tensor) -> Tensor:
    """Cross-entropy in nats (B, L) of the clean bits under logits (B, L, 2), zero where a bit
    was not masked."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), bits.long().flatten(), reduction="none")
    return ce.view(bits.shape) * masked


def denoising_loss(logits: Tensor, bits: Tensor, masked: Tensor) -> Tensor:
    """The training objective: mean cross-entropy (nats) over the masked bits of the batch."""
    return masked_cross_entropy(logits, bits, masked).sum() / masked.sum().clamp(min=1)


def data_bit_mask(masked: Tensor) -> Tensor:
    """``masked`` restricted to data bits (frame positions 0–7): what accuracy is reported on."""
    is_data = torch.arange(masked.size(-1), device=masked.device) % FRAME_BITS < DATA_BITS
    return masked & is_data


class DenoisingStats(NamedTuple):
    """Sums over the masked data bits of a batch: cross-entropy in bits, correct argmax
    predictions, and their count (accuracy = correct / count, loss = ce_bits / count)."""

    ce_bits: Tensor
    correct: Tensor
    count: Tensor


def denoising_stats(logits: Tensor, bits: Tensor, masked: Tensor) -> DenoisingStats:
    data = data_bit_mask(masked)
    ce = masked_cross_entropy(logits, bits, data).sum() / math.log(2)
    correct = ((logits.argmax(-1) == bits.long()) & data).sum()
    return DenoisingStats(ce, correct, data.sum())


def elbo_bits(
    model: TransformerLM, bits: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Upper bound (in bits, (B,)) on −log2 p(window) of each window of bits (B, L) under a
    diffusion model, one unbiased sample of the any-order bound each (module docstring): m
    masked positions with m stratified across the batch (each window's m is still uniform on
    1 … L), then (L / m) · Σ_masked CE. ``generator`` lives on the bits' device."""
    B, L = bits.shape
    strata = torch.randperm(B, generator=generator, device=bits.device)
    u = (strata + torch.rand(B, generator=generator, device=bits.device)) / B
    counts = (u * L).ceil().clamp(1, L).long()
    masked = mask_exactly(bits.shape, counts, generator, bits.device)
    logits, _ = model(bits.long().masked_fill(masked, MASK), causal=False)
    ce = masked_cross_entropy(logits, bits, masked).sum(1) / math.log(2)
    return ce * L / counts.to(ce.device)


class DiffusionObjective(Objective):
    """Masked denoising (``model.mode=diffusion``): the mean cross-entropy of the masked bits
    (parity bits included: they are part of the joint the bound covers) of windows corrupted at
    noise time t ~ U(0, ``Knobs.noise_level``), which the ``DiffusionCurriculum`` lowers over
    training. Metrics: ``bit_acc`` (argmax accuracy on the masked data bits) and, in
    validation (t ~ U(0, 1), seeded by the batch index), ``bpb``: the any-order upper bound
    ``elbo_bits`` on the model's bits per byte.

    Telemetry reads ``frame_predictions`` (each frame predicted with itself masked: on clean
    input the model would see the bits it predicts) on the first ``telemetry_windows`` windows
    of a training batch (two extra passes without gradients) and on every validation window;
    ``telemetry_windows=None``: no telemetry, no extra passes."""

    metrics: ClassVar[dict[str, Callable[[], Metric]]] = {"bit_acc": MeanMetric, "bpb": BitsPerByte}
    knobs = frozenset({"noise_level"})
    regularisable = False  # its telemetry reads frame predictions, not next-bit ones

    def __init__(self, telemetry_windows: int | None = 4) -> None:
        if telemetry_windows is not None and telemetry_windows < 1:
            raise BitLMError(
                f"module.diffusion_telemetry_windows must be >= 1, got {telemetry_windows}"
            )
        self.telemetry_windows = telemetry_windows

    @staticmethod
    def check_model(config: ModelConfig) -> None:
        if config.mode != "diffusion":
            raise BitLMError("masked denoising trains model.mode=diffusion models")

    def training_step(self, model: nn.Module, bits: Tensor, knobs: Knobs) -> Output:
        out = self._denoise(model, bits, knobs.noise_level)
        if self.telemetry_windows is not None:
            out.seen = bits[: self.telemetry_windows]
            out.predictions = _predictions(model, out.seen)
        return out

    def validation_step(self, model: nn.Module, bits: Tensor, batch_idx: int) -> Output:
        generator = torch.Generator(bits.device).manual_seed(batch_idx)
        out = self._denoise(model, bits, 1.0, generator)
        window_bits = elbo_bits(model, bits, generator)  # bound on −log2 p(window)
        n_bytes = bits.size(1) // FRAME_BITS
        out.metrics["bpb"] = ((window_bits / n_bytes)[:, None].expand(-1, n_bytes),)
        if self.telemetry_windows is not None:
            out.seen, out.predictions = bits, _predictions(model, bits)
        return out

    def _denoise(
        self, model: nn.Module, bits: Tensor, noise_level: float, generator=None
    ) -> Output:
        """Loss and masked-bit accuracy of denoising bits corrupted at t ~ U(0, noise_level)."""
        t = sample_noise_times(bits.size(0), noise_level, generator, bits.device)
        rate = corruption_rate(model.config.noise_schedule, t)
        noisy, masked = corrupt(bits, rate, generator)
        logits, aux = model(noisy, causal=False)
        stats = denoising_stats(logits, bits, masked)
        metrics = {"bit_acc": (stats.correct / stats.count, stats.count)} if stats.count else {}
        return Output(denoising_loss(logits, bits, masked), metrics, aux=aux)


def _predictions(model: nn.Module, bits: Tensor) -> Tensor:
    """``frame_predictions`` without gradients: extra passes that only telemetry reads."""
    with torch.no_grad():
        return frame_predictions(model, bits)
