"""A knob of the objective that moves along a schedule of the training step (curricula, ramps)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import lightning as L

from bitlm.core.errors import BitLMError
from bitlm.objectives.base import Knobs
from bitlm.training.protocols import Tunable

SHAPES = ("linear", "cosine")


class StepSchedule(L.Callback):
    """Before every training batch, set the module's ``knobs.<knob>`` to the value of the step::

        p = min(1, global_step / steps)
        linear  v = start + (end − start) · p
        cosine  v = start + (end − start) · (1 − cos(πp)) / 2

    and log it as ``train/<knob>``. ``steps`` defaults to the run's ``trainer.max_steps``.
    The value is a pure function of ``trainer.global_step``, and the settings (``steps``
    resolved) are saved in checkpoints and restored on resume, so a resumed run continues the
    schedule it started with, step for step. Subclasses name the ``knob`` (a ``Knobs`` field,
    checked when the class is defined), its ``bounds``, and the ``refusal`` raised for a
    module whose objective does not read it.
    """

    knob: ClassVar[str]
    bounds: ClassVar[tuple[float, float, bool]]  # (low, high, low included)
    refusal: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.knob not in Knobs.names():
            raise TypeError(f"{cls.__name__}.knob={cls.knob!r} is not a field of Knobs")

    def __init__(self, start: float, end: float, shape: str, steps: int | None) -> None:
        low, high, low_included = self.bounds
        for value in (start, end):
            if not (low <= value <= high if low_included else low < value <= high):
                interval = f"{'[' if low_included else '('}{low:g}, {high:g}]"
                raise BitLMError(f"{self.name} start and end must be in {interval}, got {value}")
        if shape not in SHAPES:
            raise BitLMError(f"{self.name} shape must be one of {SHAPES}, got {shape!r}")
        if steps is not None and steps < 1:
            raise BitLMError(f"{self.name} steps must be a positive integer or null, got {steps}")
        self.start, self.end, self.shape, self.steps = start, end, shape, steps

    @property
    def name(self) -> str:
        return type(self).__name__

    def value(self, step: int) -> float:
        progress = min(1.0, step / self.steps)
        if self.shape == "cosine":
            progress = (1 - math.cos(math.pi * progress)) / 2
        return self.start + (self.end - self.start) * progress

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, Tunable) or self.knob not in pl_module.objective.knobs:
            raise BitLMError(self.refusal)
        if self.steps is None:  # not restored from a checkpoint either
            steps = (
                trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
            )
            if not math.isfinite(steps):
                raise BitLMError(f"{self.name} needs trainer.max_steps or max_epochs")
            self.steps = int(steps)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Tunable, batch: Any, batch_idx: int
    ) -> None:
        value = self.value(trainer.global_step)
        pl_module.knobs = dataclasses.replace(pl_module.knobs, **{self.knob: value})
        pl_module.log(f"train/{self.knob}", value)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "shape": self.shape, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start, self.end = state_dict["start"], state_dict["end"]
        self.shape, self.steps = state_dict["shape"], state_dict["steps"]
