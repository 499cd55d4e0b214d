"""The masked-denoising objective of diffusion mode and its likelihood bounds.

**Why masking, not bit flipping.** A masked unit is *known* to be unknown, so the model spends no
capacity guessing which were corrupted, and unmasked ones are exact evidence. Masking is the
absorbing-state diffusion whose likelihood has a tractable bound (below), so a diffusion model's
bits per byte can be reported honestly.

**Training: the continuous-time bound** (MDLM, Sahoo et al. 2024). With U units per window, each
masked with probability γ(t) at noise time t, the negative log-likelihood is bounded by::

    −log p(x) ≤ E_{t ~ U(0,1)} [ γ'(t) / γ(t) · Σ_{i masked} −log p_θ(x_i | z_t) ]

(γ'(t)/γ(t) = 1/t for the linear schedule). ``weighting="elbo"`` trains on exactly this per
window, divided by its bytes (nats per byte), with the batch's t low-discrepancy
(``sample_noise_times``) and floored at ``T_MIN`` (the weight is unbounded near 0).
``weighting="mean"`` is the first release's loss: the mean cross-entropy over all masked bits of
the batch, which weights each window by how much of it is masked instead.

**Validation: the any-order bound.** A masked-diffusion model is an any-order autoregressive
model (unmask one unit at a time in random order), so (Uria et al. 2014; Hoogeboom et al. 2022)::

    −log p(x) ≤ U · E_{m ~ U{1..U}} E_{|M| = m} [ (1/m) Σ_{i∈M} −log p_θ(x_i | x with M masked) ]

``elbo_bits`` estimates it with one mask per window (m stratified over the batch): the same bound
as the one above, with exactly m masked instead of γ(t)·U on average, so less variance. Parity bits
are part of x; since p(data) = Σ_parity p(data, parity) ≥ p(data, parity(data)), the bound per
byte is an upper bound on the bits per byte of the data. A frame model scores a masked frame's
bits one after another (its parity bit is computed), so each term is an exact byte likelihood.
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
    bit_mask,
    corruption_rate,
    draw_mask,
    frame_predictions,
    mask_exactly,
    masked_logits,
    rate_derivative,
    sample_noise_times,
    units_of,
)
from bitlm.model.transformer import TransformerLM
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


WEIGHTINGS = ("elbo", "mean")
T_MIN = 1e-3
"""Floor of the training noise times (MDLM's ε): γ'(t)/γ(t) grows without bound as t → 0."""


def elbo_loss(logits: Tensor, bits: Tensor, masked: Tensor, weight: Tensor) -> Tensor:
    """The continuous-time bound (module docstring) in nats per byte, averaged over windows:
    mean_b weight_b · Σ_{masked bits of b} CE / bytes per window."""
    per_window = masked_cross_entropy(logits, bits, masked).sum(1) * weight
    return per_window.mean() / (bits.size(1) // FRAME_BITS)


def elbo_bits(
    model: TransformerLM, bits: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Upper bound (in bits, (B,)) on −log2 p(window) of each window of bits (B, L) under a
    diffusion model, one unbiased sample of the any-order bound each (module docstring): m
    masked units with m stratified across the batch (each window's m is still uniform on
    1 … U), then (U / m) · Σ_masked CE. ``generator`` lives on the bits' device."""
    B, U = bits.size(0), bits.size(1) // units_of(model.config)
    strata = torch.randperm(B, generator=generator, device=bits.device)
    u = (strata + torch.rand(B, generator=generator, device=bits.device)) / B
    counts = (u * U).ceil().clamp(1, U).long()
    masked = mask_exactly(torch.Size((B, U)), counts, generator, bits.device)
    logits, _ = masked_logits(model, bits, masked)
    ce = masked_cross_entropy(logits, bits, bit_mask(masked, model.config)).sum(1) / math.log(2)
    return ce * U / counts.to(ce.device)


class DiffusionObjective(Objective):
    """Masked denoising (``model.mode=diffusion``): the masked units' cross-entropy, weighted by
    the continuous-time bound (``weighting="elbo"``) or averaged (``"mean"``; module
    docstring), of windows corrupted at noise times t on [0, ``Knobs.noise_level``] (the
    ``DiffusionCurriculum`` may lower it; with it below 1 the loss bounds only the noise levels
    trained). Metrics: ``bit_acc`` (argmax accuracy on the masked data bits) and, in
    validation (t on [0, 1], seeded by the batch index), ``bpb``: the any-order upper bound
    ``elbo_bits`` on the model's bits per byte.

    Telemetry reads ``frame_predictions`` (each frame predicted with itself masked: on clean
    input the model would see the bits it predicts) on the first ``telemetry_windows`` windows
    of a training batch (two extra passes without gradients) and on every validation window;
    ``telemetry_windows=None``: no telemetry, no extra passes."""

    metrics: ClassVar[dict[str, Callable[[], Metric]]] = {"bit_acc": MeanMetric, "bpb": BitsPerByte}
    knobs = frozenset({"noise_level"})
    regularisable = False  # its telemetry reads frame predictions, not next-bit ones

    def __init__(self, telemetry_windows: int | None = 4, weighting: str = "elbo") -> None:
        if telemetry_windows is not None and telemetry_windows < 1:
            raise BitLMError(
                f"module.diffusion_telemetry_windows must be >= 1, got {telemetry_windows}"
            )
        if weighting not in WEIGHTINGS:
            raise BitLMError(
                f"module.diffusion_weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}"
            )
        self.telemetry_windows = telemetry_windows
        self.weighting = weighting

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
        """Loss and masked-bit accuracy of denoising bits corrupted at noise times on
        [0, noise_level]."""
        config = model.config
        t = sample_noise_times(bits.size(0), noise_level, generator, bits.device)
        t = t.clamp_min(T_MIN) if self.weighting == "elbo" else t
        rate = corruption_rate(config.noise_schedule, t).to(bits.device)
        units = bits.size(1) // units_of(config)
        masked = draw_mask(torch.Size((bits.size(0), units)), rate, generator, bits.device)
        logits, aux = masked_logits(model, bits, masked)
        on_bits = bit_mask(masked, config)
        stats = denoising_stats(logits, bits, on_bits)
        metrics = {"bit_acc": (stats.correct / stats.count, stats.count)} if stats.count else {}
        if self.weighting == "elbo":
            weight = rate_derivative(config.noise_schedule, t).to(rate) / rate
            loss = elbo_loss(logits, bits, on_bits, weight)
        else:
            loss = denoising_loss(logits, bits, on_bits)
        return Output(loss, metrics, aux=aux)


def _predictions(model: nn.Module, bits: Tensor) -> Tensor:
    """``frame_predictions`` without gradients: extra passes that only telemetry reads."""
    with torch.no_grad():
        return frame_predictions(model, bits)
