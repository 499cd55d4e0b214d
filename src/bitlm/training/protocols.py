"""The typed seams between callbacks and the LightningModule: what a callback may rely on,
checked with ``isinstance`` when it starts, instead of attributes looked up by name (where a
renamed attribute would make a callback silently set a new one)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn

from bitlm.objectives.base import Knobs, Objective


@runtime_checkable
class Tunable(Protocol):
    """A module whose objective settings (``Knobs``) a schedule callback moves: it assigns a new
    ``knobs`` before every batch; ``objective.knobs`` names the fields the objective reads."""

    knobs: Knobs
    objective: Objective


@runtime_checkable
class Growable(Protocol):
    """A module whose model a growth callback replaces by a grown one (``AdaptiveExpansion``)."""

    model: nn.Module
    growths: list[dict[str, Any]]

    def install_model(self, model: nn.Module) -> None: ...

    def record_growth(self, lr_scale: float, warmup_steps: int) -> None: ...


@runtime_checkable
class GrowsContext(Protocol):
    """A callback that may grow the model's context during training, up to ``context_limit``
    bits (None: no limit of its own): the data windows must be sized for it."""

    @property
    def context_limit(self) -> int | None: ...
