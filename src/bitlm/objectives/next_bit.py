"""Next-bit prediction: the objective of causal bit models (both trunks).

Loss: the mean cross-entropy of each data bit given the bits before it (``bit_cross_entropy``;
parity targets excluded unless ``include_parity``: they are a function of their frame, so
learning them teaches nothing about the text), in training smoothed by ``label_smoothing``.
Metric: bpb (never smoothed). With probability
``Knobs.compress_prob`` a training batch is read run-length coded (``RunLengthInput``) and its
bpb is reported as ``bpb_compressed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from bitlm.core.errors import BitLMError
from bitlm.core.rle import compress_bits
from bitlm.model.config import ModelConfig
from bitlm.objectives.base import Knobs, Objective, Output
from bitlm.objectives.losses import BitsPerByte, bit_cross_entropy


class RunLengthInput:
    """The input transform of compressed training: the batch is run-length coded
    (``bitlm.core.rle``) and the model reads it through ``forward_compressed``, which gives the
    logits of the raw bits by construction; the original's compression ramp moves how often."""

    def __call__(self, model: nn.Module, bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return model.forward_compressed(compress_bits(bits))


class CausalBitObjective(Objective):
    metrics: ClassVar[dict[str, Callable[[], Metric]]] = {
        "bpb": BitsPerByte,
        "bpb_compressed": BitsPerByte,
    }
    knobs = frozenset({"compress_prob"})

    def __init__(self, include_parity: bool = False, label_smoothing: float = 0.0) -> None:
        self.include_parity = include_parity
        self.label_smoothing = label_smoothing
        self.compressed_input = RunLengthInput()

    @staticmethod
    def check_model(config: ModelConfig) -> None:
        if config.unit != "bit" or config.mode != "causal":
            raise BitLMError("next-bit prediction trains causal bit models (model.unit=bit)")

    def training_step(self, model: nn.Module, bits: Tensor, knobs: Knobs) -> Output:
        compress = knobs.compress_prob > 0 and bool(torch.rand(()) < knobs.compress_prob)
        logits, aux = self.compressed_input(model, bits) if compress else model(bits)
        metric = "bpb_compressed" if compress else "bpb"
        return self._output(logits, bits, aux, metric, self.label_smoothing)

    def validation_step(self, model: nn.Module, bits: Tensor, batch_idx: int) -> Output:
        logits, aux = model(bits)
        return self._output(logits, bits, aux, "bpb", 0.0)

    def _output(
        self, logits: Tensor, bits: Tensor, aux: dict[str, Tensor], metric: str, smoothing: float
    ) -> Output:
        loss, byte_bits = bit_cross_entropy(logits, bits, self.include_parity, smoothing)
        return Output(loss, {metric: (byte_bits,)}, logits, bits, aux)
