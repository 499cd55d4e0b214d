"""Whether training is healthy, and so whether its weights may be saved as a good checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from bitlm.core.errors import BitLMError

UNIFORM_BPB = 8.0
"""Bits per byte of a model that knows nothing (every byte 1/256): any sane model is near it
or below."""


@dataclass
class TrainingHealth:
    """The verdict on each optimizer step and each validation, from the losses alone.

    A step is **bad** when its loss or gradients are NaN or infinite, or when its loss
    *spikes*: ``loss > spike_factor · EMA``, the EMA (decay ``ema_decay``) running over the
    losses of good steps only, once ``warmup_steps`` good steps have been seen. A run whose
    weights a step ruined (a learning rate far too high) shows it in the next steps' losses
    even while they stay finite, which is what a NaN-only check misses. A validation is
    **insane** when its bpb is not finite or exceeds ``spike_factor ·
    min(8, best bpb so far)`` (8: knowing nothing).

    ``ok``: the last step was good and the last validation sane — the weights as they are now
    may be written as a good checkpoint (``LastCheckpoint``, ``BestCheckpoint``).
    ``spike_factor=None`` judges non-finite values only.

    Saved with the checkpoint: the EMA, the good-step count, the best validation bpb and the
    number of bad steps in the whole run. Not the current streak: a resume is the user's fresh
    attempt (after lowering the learning rate), and it starts with the full allowance.
    """

    spike_factor: float | None = 4.0
    warmup_steps: int = 50
    ema_decay: float = 0.98
    ema: float | None = None
    good_steps: int = 0
    bad_steps: int = 0  # in the whole run
    streak: int = 0  # bad steps in a row, up to the current one
    best_bpb: float = math.inf
    validation_sane: bool = True

    @property
    def ok(self) -> bool:
        return self.streak == 0 and self.validation_sane

    def judge_step(self, loss: float, finite_gradients: bool) -> bool:
        """Record one optimizer step (``loss``: its mean training loss); True when it is bad."""
        bad = not (finite_gradients and math.isfinite(loss)) or self.spikes(loss)
        if bad:
            self.bad_steps += 1
            self.streak += 1
            return True
        self.streak = 0
        self.good_steps += 1
        self.ema = (
            loss if self.ema is None else self.ema_decay * self.ema + (1 - self.ema_decay) * loss
        )
        return False

    def spikes(self, loss: float) -> bool:
        """``loss > spike_factor · EMA`` once the EMA has seen ``warmup_steps`` good steps."""
        judged = self.spike_factor is not None and self.good_steps >= self.warmup_steps
        return judged and loss > self.spike_factor * self.ema

    def judge_validation(self, bpb: float) -> bool:
        """Record a validation's bpb; True when it is sane (and then the best so far updates)."""
        limit = (self.spike_factor or math.inf) * min(UNIFORM_BPB, self.best_bpb)
        self.validation_sane = math.isfinite(bpb) and bpb <= limit
        if self.validation_sane:
            self.best_bpb = min(self.best_bpb, bpb)
        return self.validation_sane

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema,
            "good_steps": self.good_steps,
            "bad_steps": self.bad_steps,
            "best_bpb": self.best_bpb,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = state.get("ema")
        self.good_steps = state.get("good_steps", 0)
        self.bad_steps = state.get("bad_steps", 0)
        self.best_bpb = state.get("best_bpb", math.inf)
        self.streak, self.validation_sane = 0, True


def health_of(module: L.LightningModule) -> TrainingHealth | None:
    """The module's ``TrainingHealth`` (``BitLMModule.health``), None for a module without one
    (which checkpoint callbacks then treat as always healthy)."""
    health = getattr(module, "health", None)
    return health if isinstance(health, TrainingHealth) else None


def is_healthy(module: L.LightningModule) -> bool:
    health = health_of(module)
    return health is None or health.ok


def check_health_options(max_bad_steps: int, loss_spike_factor: float | None) -> None:
    if max_bad_steps < 1:
        raise BitLMError(f"module.max_bad_steps must be >= 1, got {max_bad_steps}")
    if loss_spike_factor is not None and not loss_spike_factor > 1:
        raise BitLMError(f"module.loss_spike_factor must be > 1 or null, got {loss_spike_factor}")


def guard_step(
    module: L.LightningModule,
    optimizer: torch.optim.Optimizer,
    health: TrainingHealth,
    losses: list[torch.Tensor],
    max_bad_steps: int,
) -> None:
    """Judge the step about to be taken (``TrainingHealth.judge_step`` on the loss averaged over
    its micro-batches ``losses`` and the ranks, so every rank decides alike); drop the gradients
    of a bad one (the weights then stay as they are: AdamW skips parameters without gradients),
    count it (``train/bad_steps``), and stop the run after ``max_bad_steps`` of them in a row."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    mean = module.trainer.strategy.reduce(torch.stack(losses).mean(), reduce_op="mean")
    losses.clear()
    finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))  # a DTensor's too
    loss = float(mean)
    if not health.judge_step(loss, finite):
        return
    optimizer.zero_grad(set_to_none=True)
    module.log("train/bad_steps", float(health.bad_steps))
    if health.streak >= max_bad_steps:
        raise BitLMError(
            f"{health.streak} training steps in a row (up to step {module.global_step}) "
            f"had a NaN, infinite or spiking loss (last {loss:.4g}; running mean "
            f"{health.ema or math.nan:.4g}); training stopped. Checkpoints are only "
            "written from weights a later step found healthy, so checkpoints/last.ckpt (if "
            "one was saved) holds the last good state: lower module.optimizer.lr (or set "
            "trainer.gradient_clip_val, trainer.precision=32-true), then resume with "
            "ckpt_path=last"
        )
