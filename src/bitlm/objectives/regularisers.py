"""The terms the training loop adds to an objective's loss: K/C/S regularisers and ACT's ponder
cost.

**K/C/S.** Differentiable regularisers of the predictions::

    λ_K · |K_pred − K_data| + λ_C · |C_pred − C_data| + λ_S · (1 − S)

each term a batch mean (``metrics.py`` defines K, C and S). K_data is the negentropy of the
batch's bytes. C_data is the flip-rate statistic of the batch's data bits — the very function
that gives C_pred, applied to the observed bits — rather than their LZ76 complexity: the two
measure different things on different scales, so only the matched statistic is a target the
predictions can meet (and it costs nothing per step). λ_K and λ_C default to 0. λ_S defaults to
``DEFAULT_LAMBDA_S`` = 0.02 wherever next-bit predictions are regularised (``resolve_lambda_S``;
0 for diffusion models and the byte baseline): at equal wall-clock it lowers held-out bpb on
text of other kinds by 2.9 % (all four texts, 3 seeds, 300 s) at the same in-domain bpb
(``experiments/generalization``, stage 4), by pulling over-confident predictions towards the
data's bit marginals. 0.1 gains more out of domain but costs in domain (``experiments/telemetry``).

**Ponder cost.** A model that halts (``model.use_act``) reports the expected number of layers
it ran; ``ponder_weight`` × that cost is added so halting early is worth something.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from bitlm.core.errors import BitLMError
from bitlm.model.noise import frame_predictions
from bitlm.objectives.base import Output
from bitlm.telemetry.metrics import (
    LZComplexity,
    Negentropy,
    Symbiosis,
    bit_probabilities,
    telemetry_of,
)

SYMBIOSIS_REFERENCES = ("marginal", "model")
DEFAULT_LAMBDA_S = 0.02


def resolve_lambda_S(lambda_S: float | None, regularisable: bool, telemetry: bool) -> float:
    """``lambda_S``, or for None the default: ``DEFAULT_LAMBDA_S`` when the objective has
    next-bit predictions to regularise and telemetry is on, else 0 (module docstring)."""
    if lambda_S is not None:
        return lambda_S
    return DEFAULT_LAMBDA_S if regularisable and telemetry else 0.0


@dataclass
class KCSLoss:
    """λ_K · |K − K_data| + λ_C · |C − C_data| + λ_S · (1 − S) (module docstring)."""

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


def check_kcs_options(
    kcs: KCSLoss, bit_predictions: bool, reference: str, reference_model: str | None, on: bool
) -> None:
    """Refuse K/C/S settings that cannot mean anything: λ without telemetry or for an objective
    without next-bit predictions, an unknown symbiosis reference, a model reference without a
    path."""
    if kcs.active and not on:
        raise BitLMError("module.lambda_K/C/S need module.telemetry=true: set them to 0")
    if kcs.active and not bit_predictions:
        raise BitLMError(
            "module.lambda_K/C/S regularise next-bit predictions; this model (a diffusion model, "
            "trained on masked bits only, or the byte-level baseline) has none: set them to 0"
        )
    if reference not in SYMBIOSIS_REFERENCES:
        raise BitLMError(
            f"module.symbiosis_reference must be 'marginal' or 'model', got {reference!r}"
        )
    if reference == "model" and not reference_model:
        raise BitLMError(
            "module.symbiosis_reference=model needs module.reference_model=PATH (a .ckpt or an "
            "exported model folder)"
        )


def symbiosis_reference(bits: Tensor, marginal: Tensor, model: nn.Module | None) -> Tensor:
    """What S compares the predictions of ``bits`` with: the per-position marginals (9,) of the
    training data, or a frozen reference ``model``'s P(bit = 1) (B, L) (a diffusion reference
    model's ``frame_predictions``)."""
    if model is None:
        return marginal
    with torch.no_grad():
        if model.config.mode == "diffusion":
            return bit_probabilities(frame_predictions(model, bits))
        return bit_probabilities(model(bits)[0])


@dataclass
class PonderCost:
    """``weight`` × the ACT ponder cost of the pass, when the model halts (module docstring)."""

    weight: float = 0.01

    def __call__(self, loss: Tensor, aux: dict[str, Tensor]) -> Tensor:
        if "ponder_cost" in aux:
            return loss + self.weight * aux["ponder_cost"]
        return loss


class KCSTelemetry(nn.Module):
    """K/C/S of an objective's next-bit predictions: per training step the batch means (with
    the ``KCSLoss`` term added to the loss when a λ is set), over validation the metrics
    ``val/{K,C,S}``. Holds no state of its own (the metrics' states are not saved)."""

    def __init__(self, kcs: KCSLoss) -> None:
        super().__init__()
        self.kcs = kcs
        self.val = MetricCollection(
            {"K": Negentropy(), "C": LZComplexity(), "S": Symbiosis()}, prefix="val/"
        )

    def training_term(
        self, out: Output, reference: Tensor
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``(term to add to the loss, None without λ; the batch telemetry, detached)``."""
        with torch.set_grad_enabled(self.kcs.active):
            loss, telemetry = self.kcs(out.predictions, out.seen, reference)
        term = loss if self.kcs.active else None
        return term, {f"telemetry/{k}": v.detach() for k, v in telemetry.items()}

    def validation_update(self, out: Output, reference: Tensor) -> MetricCollection:
        """Update the validation metrics with a batch; returns them, for logging."""
        for name in ("K", "C"):
            self.val[name].update(out.predictions)
        self.val["S"].update(out.predictions, reference)
        return self.val
