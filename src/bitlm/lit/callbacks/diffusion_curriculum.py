"""The noise curriculum of diffusion mode: lower the training noise level as training goes on."""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from bitlm.errors import BitLMError

SHAPES = ("linear", "cosine")


class DiffusionCurriculum(L.Callback):
    """Sets ``BitLMModule.noise_level`` ν, the upper end of the training noise times
    t ~ U(0, ν), before every training batch, decaying it from ``start`` to ``end`` over
    ``steps`` optimiser steps (default: the run's ``trainer.max_steps``)::

        p = min(1, global_step / steps)
        linear  ν = start + (end − start) · p
        cosine  ν = start + (end − start) · (1 − cos(πp)) / 2

    Early steps see every noise level, later ones ever fewer heavily masked windows. ν is a pure
    function of ``trainer.global_step``, and the settings (with ``steps`` resolved) are saved in
    checkpoints and restored on resume, so a resumed run continues the schedule it started with,
    step for step. Logged as ``train/noise_level``.
    """

    def __init__(
        self, start: float = 1.0, end: float = 0.5, shape: str = "linear", steps: int | None = None
    ) -> None:
        if not (0.0 < end <= 1.0 and 0.0 < start <= 1.0):
            raise BitLMError(f"curriculum start and end must be in (0, 1], got {start}, {end}")
        if shape not in SHAPES:
            raise BitLMError(f"curriculum shape must be one of {SHAPES}, got {shape!r}")
        if steps is not None and steps < 1:
            raise BitLMError(f"curriculum steps must be a positive integer or null, got {steps}")
        self.start, self.end, self.shape, self.steps = start, end, shape, steps

    def noise_level(self, step: int) -> float:
        progress = min(1.0, step / self.steps)
        if self.shape == "cosine":
            progress = (1 - math.cos(math.pi * progress)) / 2
        return self.start + (self.end - self.start) * progress

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not getattr(pl_module, "diffusion", False):
            raise BitLMError(
                "the diffusion curriculum sets the noise level of diffusion training: use "
                "model.mode=diffusion (experiment=diffusion), or drop the diffusion_curriculum "
                "callback"
            )
        if self.steps is None:  # not restored from a checkpoint either
            steps = (
                trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
            )
            if not math.isfinite(steps):
                raise BitLMError("the diffusion curriculum needs trainer.max_steps or max_epochs")
            self.steps = int(steps)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pl_module.noise_level = self.noise_level(trainer.global_step)
        pl_module.log("train/noise_level", pl_module.noise_level)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "shape": self.shape, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start, self.end = state_dict["start"], state_dict["end"]
        self.shape, self.steps = state_dict["shape"], state_dict["steps"]
