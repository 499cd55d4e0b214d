"""The noising process of diffusion mode: corruption-rate schedules, masking, and a model's
predictions of what was masked.

**Noising.** Noise time t ∈ [0, 1] maps to a corruption rate γ(t) through a schedule
(``SCHEDULES``; all rise monotonically from γ(0) = 0 to γ(1) = 1)::

    linear  γ(t) = t
    cosine  γ(t) = 1 − cos(πt/2)                     slow start: little noise for small t
    exp     γ(t) = (1 − e^(−5t)) / (1 − e^(−5))      fast start: heavy noise early

and every *unit* of a window is replaced by MASK independently with probability γ(t): a bit
(``diffusion_unit=bit``, parity bits included) or a whole frame (``diffusion_unit=frame``).
Training draws the noise times of a batch low-discrepancy (``sample_noise_times``) on [0, ν],
ν being the noise level the ``DiffusionCurriculum`` callback may lower (1 without it).

The objective and its likelihood bounds are in ``bitlm.objectives.denoising``; the samplers in
``bitlm.generation.diffusion``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from bitlm.core.bits import FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import MASK, TransformerLM

EXP_RATE = 5.0
"""Steepness k of the ``exp`` schedule γ(t) = (1 − e^(−kt)) / (1 − e^(−k))."""


def _linear(t: Tensor) -> Tensor:
    return t


def _cosine(t: Tensor) -> Tensor:
    return 1 - torch.cos(math.pi / 2 * t)


def _exp(t: Tensor) -> Tensor:
    return -torch.expm1(-EXP_RATE * t) / -math.expm1(-EXP_RATE)


SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": _linear,
    "cosine": _cosine,
    "exp": _exp,
}
"""Corruption rate γ(t) of each noise schedule (module docstring); names as in
``ModelConfig.noise_schedule`` (``NOISE_SCHEDULES``)."""


def corruption_rate(schedule: str, t: Tensor | float) -> Tensor:
    """γ(t) of ``schedule`` for noise times t ∈ [0, 1], clamped to [0, 1]."""
    if schedule not in SCHEDULES:
        raise BitLMError(f"noise schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    t = torch.as_tensor(t, dtype=torch.float32)
    return SCHEDULES[schedule](t.clamp(0, 1)).clamp(0, 1)


def units_of(config: ModelConfig) -> int:
    """Bits per noise unit: 1 (``diffusion_unit=bit``) or a frame's 9."""
    return FRAME_BITS if config.diffusion_unit == "frame" else 1


def draw_mask(
    shape: torch.Size, rate: Tensor, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """A mask (B, U) of units, each masked independently with probability ``rate`` (B,)."""
    draws = torch.rand(shape, generator=generator, device=device)
    return draws < rate.to(draws.device)[:, None]


def bit_mask(masked: Tensor, config: ModelConfig) -> Tensor:
    """The mask (B, L) over bits of a mask (B, U) over units."""
    return masked.repeat_interleave(units_of(config), dim=1)


def masked_logits(
    model: TransformerLM, bits: Tensor, masked: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """A diffusion model's logits (B, L, 2) for every bit of bits (B, L) with the units
    ``masked`` (B, U) (None: none) hidden from it, and its telemetry: a bit model reads the bits
    with MASK in their place, a frame model the clean bits and the hidden frames
    (``HierarchicalBitLM.forward``)."""
    if masked is None:
        shape = (bits.size(0), bits.size(1) // units_of(model.config))
        masked = torch.zeros(shape, dtype=torch.bool, device=bits.device)
    if model.config.diffusion_unit == "frame":
        return model(bits, causal=False, hidden=masked)
    return model(bits.long().masked_fill(masked, MASK), causal=False)


def mask_exactly(shape: torch.Size, counts: Tensor, generator=None, device=None) -> Tensor:
    """A mask (B, L) with exactly ``counts[b]`` positions of row b masked, chosen uniformly."""
    keys = torch.rand(shape, generator=generator, device=device)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < counts.to(ranks.device)[:, None]


def sample_noise_times(
    batch_size: int, noise_level: float = 1.0, generator=None, device=None
) -> Tensor:
    """Noise times (B,) of a batch, low-discrepancy on [0, ν] (MDLM's sampler): one uniform
    offset u shared by the batch, t_b = ν · ((u + b) / B) — each of the B strata of [0, ν] holds
    exactly one t, so the batch covers the noise levels evenly. Each t_b is still uniform on
    [0, ν] (an unbiased estimate of the bound), with far less variance than B independent draws."""
    u = torch.rand(1, generator=generator, device=device)
    return noise_level * (u + torch.arange(batch_size, device=u.device)) / batch_size


def rate_derivative(schedule: str, t: Tensor) -> Tensor:
    """γ'(t) of ``schedule`` (for the continuous-time bound's weight γ'(t) / γ(t))."""
    if schedule not in SCHEDULES:
        raise BitLMError(f"noise schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    return torch.vmap(torch.func.grad(SCHEDULES[schedule]))(t.float())


def frame_predictions(model: TransformerLM, bits: Tensor) -> Tensor:
    """Logits (B, L, 2) of every bit of bits (B, L) predicted with its own frame masked, in two
    passes: even frames masked (and predicted from the odd ones), then odd frames. On clean input
    a diffusion model sees each bit it predicts, so its predictions say nothing; these are what
    its telemetry (``BitLMModule``), its safety judge and a diffusion symbiosis reference read."""
    n = bits.size(1) // FRAME_BITS
    odd = (torch.arange(n, device=bits.device) % 2 == 1).expand(bits.size(0), -1)
    per_frame = FRAME_BITS // units_of(model.config)
    logits = [
        masked_logits(model, bits, hidden.repeat_interleave(per_frame, dim=1))[0]
        for hidden in (~odd, odd)
    ]
    odd_bits = odd.repeat_interleave(FRAME_BITS, dim=1)
    return torch.where(odd_bits[..., None], logits[1], logits[0])
