"""The noising process of diffusion mode: corruption-rate schedules, masking, and a model's
per-frame predictions.

**Noising.** Noise time t ∈ [0, 1] maps to a corruption rate γ(t) through a schedule
(``SCHEDULES``; all rise monotonically from γ(0) = 0 to γ(1) = 1)::

    linear  γ(t) = t
    cosine  γ(t) = 1 − cos(πt/2)                     slow start: little noise for small t
    exp     γ(t) = (1 − e^(−5t)) / (1 − e^(−5))      fast start: heavy noise early

and every bit of a window (parity bits included) is replaced by the MASK symbol independently with
probability γ(t). Training draws t ~ U(0, ν) per sequence, ν being the noise level the
``DiffusionCurriculum`` callback lowers over training (1 without it), and minimises the mean
cross-entropy of the masked bits under the model's bidirectional predictions p_θ(x_i | z_t).

The objective and its likelihood bound are in ``bitlm.objectives.denoising``; the sampler in
``bitlm.generation.diffusion``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from bitlm.core.bits import FRAME_BITS
from bitlm.core.errors import BitLMError
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


def corrupt(
    bits: Tensor, rate: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Mask each bit of bits (B, L) independently with probability ``rate`` (B,); returns the
    noisy symbols (B, L) (0, 1 or MASK) and the mask (B, L) bool."""
    draws = torch.rand(bits.shape, generator=generator, device=bits.device)
    masked = draws < rate.to(bits.device)[:, None]
    return bits.long().masked_fill(masked, MASK), masked


def mask_exactly(shape: torch.Size, counts: Tensor, generator=None, device=None) -> Tensor:
    """A mask (B, L) with exactly ``counts[b]`` positions of row b masked, chosen uniformly."""
    keys = torch.rand(shape, generator=generator, device=device)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < counts.to(ranks.device)[:, None]


def sample_noise_times(
    batch_size: int, noise_level: float = 1.0, generator=None, device=None
) -> Tensor:
    """Training noise times t ~ U(0, noise_level), (B,)."""
    return noise_level * torch.rand(batch_size, generator=generator, device=device)


def frame_predictions(model: TransformerLM, bits: Tensor) -> Tensor:
    """Logits (B, L, 2) of every bit of bits (B, L) predicted with its own frame masked, in two
    passes: even frames masked (and predicted from the odd ones), then odd frames. On clean input
    a diffusion model sees each bit it predicts, so its predictions say nothing; these are what
    its telemetry (``BitLMModule``), its safety judge and a diffusion symbiosis reference read."""
    frames = bits.long().view(bits.size(0), -1, FRAME_BITS)
    odd = (torch.arange(frames.size(1), device=bits.device) % 2 == 1)[None, :, None]
    logits = []
    for hidden in (~odd, odd):
        masked = hidden.expand_as(frames)
        out, _ = model(frames.masked_fill(masked, MASK).flatten(1), causal=False)
        logits.append(out.view(*frames.shape, 2))
    return torch.where(odd[..., None], logits[1], logits[0]).flatten(1, 2)
