"""Distillation: collapse a trained teacher into a smaller student (``bitlm-distill``).

``collapse_submodel`` follows the original's recipe, done measurably:

1. **Pick the training sequences** by telemetry: ``TelemetrySynthesizer(teacher)`` clusters a pool
   of windows by their K/C and the teacher's K/C/S on them, and the representative of each of
   ``n_sequences`` clusters is kept: a small sample that covers what the teacher sees.
2. **Size the student**: the teacher's architecture with half its layers and the widest d_model
   (an even number of the teacher's heads, so a 1.5× widening keeps whole heads) whose parameter
   count stays within ``target_params``.
3. **Train a round**: ``steps_per_round`` steps of knowledge distillation from the teacher's bit
   distributions plus the data loss over the data bits (``distillation_loss``, a Lightning fit).
4. **Check the floors**: the student's K, C and S on validation windows must each reach its
   floor. A miss deepens the student by one block (function-preserving, ``model/expand.py``)
   and, the first time, widens it by ``width_scale``; then the next round, up to ``max_rounds``.

``save_distilled_model`` writes the exported model folder with ``metrics.json`` (student and
teacher: bpb, K, C, S, parameters, size of the weights file; every round; the floors and whether
they held).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bitlm.core.bits import DATA_BITS, FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.io import save_pretrained, serialized_weights
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.model.expand import grow_to
from bitlm.model.transformer import evaluating
from bitlm.objectives.losses import bit_cross_entropy
from bitlm.telemetry.metrics import prediction_telemetry
from bitlm.telemetry.synthesizer import TelemetrySynthesizer
from bitlm.training import optim

log = logging.getLogger(__name__)

FLOORS = {"K": 0.5, "C": 0.3, "S": 0.5}
"""The original's telemetry floors for a distilled model."""
METRICS_NAME = "metrics.json"


@dataclass
class Distilled:
    """The student ``collapse_submodel`` ended with, its figures and the teacher's on the same
    validation windows, and one record per training round."""

    model: nn.Module
    metrics: dict[str, float]
    teacher: dict[str, float]
    floors: dict[str, float]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def floors_met(self) -> bool:
        return meets(self.metrics, self.floors)


def collapse_submodel(
    teacher: nn.Module,
    data: Tensor,
    target_params: int,
    floors: Mapping[str, float] = FLOORS,
    max_rounds: int = 3,
    width_scale: float = 1.5,
    *,
    val_data: Tensor | None = None,
    n_sequences: int = 2048,
    steps_per_round: int = 1500,
    batch_size: int = 16,
    lr: float = 3e-3,
    alpha: float = 0.5,
    temperature: float = 1.0,
    seed: int = 0,
    trainer_options: Mapping[str, Any] | None = None,
) -> Distilled:
    """Distil ``teacher`` into a student of at most ``target_params`` parameters (at the start;
    the rounds that miss a floor grow it) trained on windows of ``data`` (N, L) picked by
    telemetry clustering, judged on ``val_data`` (default: ``data``). See the module docstring."""
    _check_options(teacher, floors, max_rounds, width_scale, alpha, temperature)
    val_data = data if val_data is None else val_data
    reference = data.view(data.size(0), -1, FRAME_BITS).float().mean((0, 1))  # P(bit=1) (9,)
    teacher = teacher.eval().requires_grad_(False)
    synthesizer = TelemetrySynthesizer(teacher, reference, seed=seed)
    sequences = synthesizer.cluster_sequences(data, min(n_sequences, data.size(0))).sequences
    torch.manual_seed(seed)
    student = build_model(student_config(teacher.config, target_params))
    result = Distilled(student, {}, measure(teacher, val_data, reference), dict(floors))
    for round_ in range(1, max_rounds + 1):
        fit = DistillationModule(student, teacher, alpha, temperature, lr, steps_per_round)
        loader = _loader(sequences, batch_size, seed + round_)
        trainer = L.Trainer(**_trainer_options(steps_per_round, trainer_options))
        trainer.fit(fit, train_dataloaders=loader)
        result.metrics = measure(student, val_data, reference)
        result.rounds.append({"round": round_, "model": student.config.to_dict(), **result.metrics})
        log.info("distillation round %d: %s", round_, _figures(result.metrics))
        if result.floors_met or round_ == max_rounds:
            break
        student = grow_to(
            student, _grown(student.config, widen=round_ == 1, scale=width_scale)
        ).model
        result.model = student
    return result


def student_config(teacher: ModelConfig, target_params: int) -> ModelConfig:
    """Half the teacher's layers (at least one) and the widest d_model, an even number of the
    teacher's heads wide, whose parameter count is at most ``target_params``."""
    layers = max(1, teacher.n_layers // 2)
    widths = [(h, h * teacher.head_dim) for h in range(2, max(2, teacher.n_heads) + 1, 2)]
    candidates = [
        dataclasses.replace(teacher, n_layers=layers, d_model=d, n_heads=h, d_ff=4 * d)
        for h, d in widths
    ]
    fitting = [c for c in candidates if parameter_count(c) <= target_params]
    if not fitting:
        raise BitLMError(
            f"target_params={target_params} is below the smallest student of this teacher "
            f"({parameter_count(candidates[0])} parameters: {layers} layer(s), 2 heads of "
            f"{teacher.head_dim})"
        )
    return fitting[-1]


def parameter_count(config: ModelConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(config).parameters())


def _grown(config: ModelConfig, widen: bool, scale: float) -> ModelConfig:
    """One more block; × ``scale`` in width (whole heads) when ``widen``."""
    grown = dataclasses.replace(config, n_layers=config.n_layers + 1)
    if not widen:
        return grown
    heads = max(config.n_heads + 1, round(config.n_heads * scale))
    width = heads * config.head_dim
    return dataclasses.replace(
        grown, d_model=width, n_heads=heads, d_ff=config.d_ff * width // config.d_model
    )


def distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, bits: Tensor, alpha: float, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, KL, CE)`` over the data bits of bits (B, L) and logits (B, L, 2)::

        loss = α · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α) · CE(student, bits)

    (Hinton et al. 2015: T² keeps the soft term's gradients on the scale of the hard one's). The
    parity bits are left out: they are a function of their frame (the loss's convention)."""
    data = torch.arange(bits.size(1), device=bits.device) % FRAME_BITS < DATA_BITS
    s = F.log_softmax(student_logits[:, data].float() / temperature, -1)
    t = F.log_softmax(teacher_logits[:, data].float() / temperature, -1)
    kl = (t.exp() * (t - s)).sum(-1).mean() * temperature**2
    ce, _ = bit_cross_entropy(student_logits, bits)
    return alpha * kl + (1 - alpha) * ce, kl, ce


class DistillationModule(L.LightningModule):
    """Trains ``student`` on ``distillation_loss`` against the frozen ``teacher``, with the
    training module's AdamW and warm-up/cosine schedule (``bitlm.training.optim``)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        alpha: float,
        temperature: float,
        lr: float,
        steps: int,
    ) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher
        self.alpha, self.temperature, self.steps = alpha, temperature, steps
        self.optimizer = optim.as_config({"lr": lr}, optim.DEFAULT_OPTIMIZER)
        self.scheduler = optim.as_config(
            {"warmup_steps": max(1, steps // 10)}, optim.DEFAULT_SCHEDULER
        )

    def training_step(self, bits: Tensor, batch_idx: int) -> Tensor:
        with torch.no_grad():
            teacher_logits, _ = self.teacher(bits)
        logits, _ = self.student(bits)
        loss, kl, ce = distillation_loss(logits, teacher_logits, bits, self.alpha, self.temperature)
        self.log_dict({"distill/loss": loss, "distill/kl": kl, "distill/ce": ce}, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = optim.build_optimizer(self.student, self.optimizer)
        scheduler = optim.build_scheduler(optimizer, self.scheduler, self.steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self.teacher.eval()
        return self


@torch.no_grad()
def measure(
    model: nn.Module, bits: Tensor, reference: Tensor, batch_size: int = 32
) -> dict[str, float]:
    """Bits per byte and the predictions' mean K, C, S (against ``reference``) on windows bits
    (N, L); the parameter count and the size of the model's ``model.safetensors``."""
    totals = {"bpb": 0.0, "K": 0.0, "C": 0.0, "S": 0.0}
    device = next(model.parameters()).device
    with evaluating(model):
        for batch in bits.split(batch_size):
            batch = batch.to(device)
            logits, _ = model(batch)
            _, byte_bits = bit_cross_entropy(logits, batch)
            totals["bpb"] += float(byte_bits.mean(1).sum())
            for name, values in prediction_telemetry(logits, reference.to(device)).items():
                totals[name] += float(values.sum())
    figures = {name: total / bits.size(0) for name, total in totals.items()}
    return figures | {
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_bytes": len(serialized_weights(model.state_dict())),
    }


def meets(figures: Mapping[str, float], floors: Mapping[str, float]) -> bool:
    return all(figures[name] >= floor for name, floor in floors.items())


def save_distilled_model(result: Distilled, directory: str | Path) -> Path:
    """The student as an exported model folder (``bitlm.io.save_pretrained``) with
    ``metrics.json``: the student's and the teacher's bpb, K, C, S, parameters and size on disk
    (float32 safetensors: parameters × 4 bytes plus the header), the floors, whether they held,
    and every round; written with the model, before the folder appears."""
    metrics = {
        "student": result.metrics,
        "teacher": result.teacher,
        "floors": result.floors,
        "floors_met": result.floors_met,
        "rounds": result.rounds,
    }
    text = json.dumps(metrics, indent=2) + "\n"
    return save_pretrained(result.model, directory, extra_files={METRICS_NAME: text})


def _check_options(
    teacher: nn.Module,
    floors: Mapping[str, float],
    max_rounds: int,
    width_scale: float,
    alpha: float,
    temperature: float,
) -> None:
    config = getattr(teacher, "config", None)
    if config is None or config.unit != "bit" or config.mode != "causal":
        raise BitLMError(
            "distillation needs a causal bit model as teacher (its next-bit distributions are "
            "the targets); got a byte-level or diffusion model"
        )
    unknown = sorted(set(floors) - set(FLOORS))
    if unknown:
        raise BitLMError(f"floors may set {sorted(FLOORS)}, got {unknown}")
    if max_rounds < 1:
        raise BitLMError(f"max_rounds must be >= 1, got {max_rounds}")
    if not width_scale > 1:
        raise BitLMError(f"width_scale must be > 1, got {width_scale}")
    if not 0 <= alpha <= 1 or not temperature > 0 or not math.isfinite(temperature):
        raise BitLMError("alpha must be in [0, 1] and temperature > 0")


def _loader(sequences: Tensor, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, sequences.size(0))
    return DataLoader(sequences, batch_size=size, shuffle=True, drop_last=True, generator=generator)


def _trainer_options(steps: int, options: Mapping[str, Any] | None) -> dict[str, Any]:
    defaults = {
        "max_steps": steps,
        "max_epochs": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "precision": "32-true",
        "gradient_clip_val": 1.0,
    }
    return defaults | dict(options or {})


def _figures(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in ("bpb", "K", "C", "S"))
