"""The interface every training objective implements, and the knobs callbacks move.

An objective turns a batch of bit windows (B, L) into a loss and named metrics, and knows which
models it can train (``check_model``). It never touches Lightning: the LightningModule is a
loop that calls it, adds the regularisers (K/C/S, ACT's ponder cost) and logs what it returns,
so each objective is tested with a plain model and a tensor.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn
from torchmetrics import Metric

from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig


@dataclass(frozen=True)
class Knobs:
    """The objective settings a callback may move during training, one field each: the
    ``DiffusionCurriculum`` lowers ``noise_level`` (the upper end of training noise times
    t ~ U(0, ν)), the ``CompressionRamp`` moves ``compress_prob`` (the share of training batches
    read run-length coded). A callback names the field it moves; a name that is not a field
    here fails when its class is defined, not silently at run time."""

    noise_level: float = 1.0
    compress_prob: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_level <= 1.0:
            raise BitLMError(f"module.noise_level must be in (0, 1], got {self.noise_level}")
        if not 0.0 <= self.compress_prob <= 1.0:
            raise BitLMError(f"module.compress_prob must be in [0, 1], got {self.compress_prob}")

    @staticmethod
    def names() -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(Knobs))


@dataclass
class Output:
    """What an objective returns for one batch.

    ``loss``: the objective's own loss (the module adds the regularisers). ``metrics``: the
    update arguments of the objective's metrics (``Objective.metrics``) by name, logged as
    ``<stage>/<name>``. ``predictions``: next-bit logits (B', L, 2) of ``seen``, the bits (B', L)
    they predict, for K/C/S telemetry (None: the objective has none). ``aux``: the model's own
    telemetry of the pass (ACT's ``ponder_cost``, ``layers_run``)."""

    loss: Tensor
    metrics: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)
    predictions: Tensor | None = None
    seen: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)


class Objective(ABC):
    """One way of training a model on bit windows."""

    metrics: ClassVar[dict[str, Callable[[], Metric]]]
    """The metrics it reports, by name; the module keeps one instance per stage."""
    knobs: ClassVar[frozenset[str]] = frozenset()
    """The ``Knobs`` fields it reads: a callback moving another one is refused."""
    bit_predictions: ClassVar[bool] = True
    """Whether it predicts bits, so K/C/S telemetry applies."""
    regularisable: ClassVar[bool] = True
    """Whether K/C/S losses may shape its predictions (next-bit predictions only)."""

    @staticmethod
    @abstractmethod
    def check_model(config: ModelConfig) -> None:
        """Raise ``BitLMError`` when the objective cannot train a model of ``config``."""

    @abstractmethod
    def training_step(self, model: nn.Module, bits: Tensor, knobs: Knobs) -> Output:
        """Loss and metrics of a training batch of bits (B, L)."""

    @abstractmethod
    def validation_step(self, model: nn.Module, bits: Tensor, batch_idx: int) -> Output:
        """Loss and metrics of a validation batch, deterministic given ``batch_idx``."""
