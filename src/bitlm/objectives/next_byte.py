"""Next-byte prediction: the objective of the byte-level baseline (``model.unit=byte``).

The baseline reads the same bit windows as the bit models, decoding each frame to its byte;
its loss is the 256-way cross-entropy of each byte given the bytes before it (in training
smoothed by ``label_smoothing``), in bits the same
per-byte quantity as a bit model's bpb, so the two compare directly. It predicts no bits, so
K/C/S telemetry and its regularisers do not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn
from torchmetrics import Metric

from bitlm.core.bits import frame_values
from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig
from bitlm.objectives.base import Knobs, Objective, Output
from bitlm.objectives.losses import BitsPerByte, byte_cross_entropy


class ByteObjective(Objective):
    metrics: ClassVar[dict[str, Callable[[], Metric]]] = {"bpb": BitsPerByte}
    bit_predictions = False
    regularisable = False

    @staticmethod
    def check_model(config: ModelConfig) -> None:
        if config.unit != "byte":
            raise BitLMError(
                "next-byte prediction trains the byte-level baseline (model.unit=byte)"
            )

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def training_step(self, model: nn.Module, bits: Tensor, knobs: Knobs) -> Output:
        return self._output(model, bits, self.label_smoothing)

    def validation_step(self, model: nn.Module, bits: Tensor, batch_idx: int) -> Output:
        return self._output(model, bits, 0.0)

    @staticmethod
    def _output(model: nn.Module, bits: Tensor, smoothing: float) -> Output:
        logits, aux = model(bits)
        loss, byte_bits = byte_cross_entropy(logits, frame_values(bits), smoothing)
        return Output(loss, {"bpb": (byte_bits,)}, aux=aux)
