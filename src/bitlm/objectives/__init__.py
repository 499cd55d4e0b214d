"""Training objectives, one file each, behind one interface (``base.Objective``): batch in,
loss and named metrics out. ``next_bit`` (causal bit models, both trunks), ``next_byte`` (the
byte-level baseline), ``denoising`` (diffusion mode); ``regularisers`` holds the terms the
training loop adds (K/C/S, ACT's ponder cost); ``losses`` the cross-entropies and bpb."""

import dataclasses

from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig
from bitlm.objectives.base import Knobs, Objective, Output
from bitlm.objectives.denoising import DiffusionObjective
from bitlm.objectives.next_bit import CausalBitObjective
from bitlm.objectives.next_byte import ByteObjective


def objective_for(
    config: ModelConfig,
    include_parity_loss: bool = False,
    telemetry_windows: int | None = 4,
    label_smoothing: float = 0.0,
    diffusion_weighting: str = "elbo",
) -> Objective:
    """The objective a model of ``config`` trains with: masked denoising for
    ``mode=diffusion``, next-byte prediction for ``unit=byte``, next-bit prediction otherwise.
    ``telemetry_windows``: windows of a diffusion training batch that telemetry reads (None:
    telemetry off); ``label_smoothing``: ε of the causal objectives' training loss
    (``losses.smoothed_ce``); ``diffusion_weighting``: the denoising loss's weighting
    (``denoising.WEIGHTINGS``)."""
    if not isinstance(label_smoothing, (int, float)) or not 0 <= label_smoothing < 1:
        raise BitLMError(f"module.label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if config.mode == "diffusion":
        if label_smoothing:
            raise BitLMError(
                "module.label_smoothing smooths the causal objectives' targets; diffusion "
                "trains on masked bits: leave it at 0.0"
            )
        objective: Objective = DiffusionObjective(telemetry_windows, diffusion_weighting)
    elif config.unit == "byte":
        objective = ByteObjective(label_smoothing)
    else:
        objective = CausalBitObjective(include_parity_loss, label_smoothing)
    objective.check_model(config)
    return objective


def check_knobs(knobs: Knobs, objective: Objective) -> Knobs:
    """``knobs``, refused when one the objective does not read is set away from its default:
    a setting that would be silently ignored."""
    for field in dataclasses.fields(Knobs):
        value = getattr(knobs, field.name)
        if field.name not in objective.knobs and value != field.default:
            raise BitLMError(
                f"module.{field.name}={value} means nothing for this model "
                f"({type(objective).__name__} does not read it): leave it at {field.default}"
            )
    return knobs


__all__ = [
    "ByteObjective",
    "CausalBitObjective",
    "DiffusionObjective",
    "Knobs",
    "Objective",
    "Output",
    "check_knobs",
    "objective_for",
]
