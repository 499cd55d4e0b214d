"""The noise curriculum of diffusion mode: lower the training noise level as training goes on."""

from __future__ import annotations

from bitlm.training.callbacks.schedule import StepSchedule


class DiffusionCurriculum(StepSchedule):
    """Sets ``Knobs.noise_level`` ν, the upper end of the training noise times
    t ~ U(0, ν), before every training batch, decaying it from ``start`` to ``end`` over
    ``steps`` optimiser steps (``StepSchedule``: linear or cosine; default: the run's
    ``trainer.max_steps``). Early steps see every noise level, later ones ever fewer heavily
    masked windows. Logged as ``train/noise_level``; exact on resume.
    """

    knob = "noise_level"
    refusal = (
        "the diffusion curriculum sets the noise level of diffusion training: use "
        "model.mode=diffusion (experiment=diffusion), or drop the diffusion_curriculum "
        "callback"
    )
    bounds = (0.0, 1.0, False)

    def __init__(
        self, start: float = 1.0, end: float = 0.5, shape: str = "linear", steps: int | None = None
    ) -> None:
        super().__init__(start, end, shape, steps)
