"""Differentiable K/C/S regularisers, added to the language-modelling loss::

    λ_K · |K_pred − K_data| + λ_C · |C_pred − C_data| + λ_S · (1 − S)

each term a batch mean (``metrics.py`` defines K, C and S). K_data is the negentropy of the
batch's bytes. C_data is the flip-rate statistic of the batch's data bits — the very function
that gives C_pred, applied to the observed bits — rather than their LZ76 complexity: the two
measure different things on different scales, so only the matched statistic is a target the
predictions can meet (and it costs nothing per step). All λ default to 0; whether the terms help
is measured in ``experiments/telemetry``, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from bitlm.telemetry.metrics import (
    data_bits,
    flip_rate_complexity,
    negentropy,
    prediction_telemetry,
)


@dataclass
class KCSLoss:
    lambda_K: float = 0.0
    lambda_C: float = 0.0
    lambda_S: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.lambda_K, self.lambda_C, self.lambda_S))

    def __call__(self, logits: Tensor, bits: Tensor, reference: Tensor) -> tuple[Tensor, dict]:
        """``(weighted loss, telemetry)`` for next-bit logits (B, 9n, 2) of bits (B, 9n); the
        telemetry holds the batch means ``K``, ``C``, ``S`` (of the predictions, with their
        graphs) and ``K_data``, ``C_data``."""
        telemetry = telemetry_of(logits, bits, reference)
        loss = (
            self.lambda_K * (telemetry["K"] - telemetry["K_data"]).abs()
            + self.lambda_C * (telemetry["C"] - telemetry["C_data"]).abs()
            + self.lambda_S * (1 - telemetry["S"])
        )
        return loss, telemetry


def telemetry_of(logits: Tensor, bits: Tensor, reference: Tensor) -> dict[str, Tensor]:
    """Batch means of K, C, S of the predictions and K, C (flip-rate statistic) of the data."""
    telemetry = {k: v.mean() for k, v in prediction_telemetry(logits, reference).items()}
    telemetry["K_data"] = negentropy(bits).mean()
    telemetry["C_data"] = flip_rate_complexity(data_bits(bits).float()).mean()
    return telemetry
