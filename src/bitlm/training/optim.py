"""AdamW and its learning-rate schedule: warmup, cosine decay, growth re-warm-ups, and a
restored optimizer made to follow the run's settings on resume."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch


def optimizer_and_schedule(
    model: torch.nn.Module,
    hp: Mapping[str, Any],
    total_steps: int,
    growths: Sequence[Mapping[str, Any]] = (),
    start_step: int = 0,
    precision: str = "32-true",
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model`` with the module's hyper-parameters ``hp``, and its per-step
    :func:`warmup_cosine` × :func:`growth_lr_factor` schedule over ``total_steps``, its next
    step being ``start_step`` (a schedule rebuilt after a growth continues where it was).
    The AdamW kernel is the fused one where :func:`fused_adamw` allows it (Lightning's
    ``precision`` decides).

    Weight decay applies to matrices (embeddings, projections) only: decaying biases and norm
    gains pulls them towards 0, which is not a prior anyone wants.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    matrices, vectors = _group_decays(hp)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": matrices},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": vectors},
    ]
    fused = fused_adamw({p.device.type for p in params}, precision)
    optimizer = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]), fused=fused)
    for group in optimizer.param_groups:
        group["initial_lr"] = hp["lr"]  # LambdaLR's base, needed to start at start_step
    schedule = functools.partial(
        scheduled_lr,
        warmup_steps=hp["warmup_steps"],
        total_steps=total_steps,
        min_ratio=hp["min_lr_ratio"],
        growths=tuple(growths),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=start_step - 1)
    return optimizer, scheduler


def fused_adamw(device_types: set[str], precision: str) -> bool | None:
    """True (AdamW's fused kernel: one launch for all parameters, the fastest AdamW in torch)
    when every parameter is on CUDA, except under fp16 autocast: its gradient scaler cannot
    unscale the gradients before Lightning clips them when the optimizer unscales them itself.
    None elsewhere (torch picks its default, foreach)."""
    return (device_types == {"cuda"} and not precision.startswith("16")) or None


def _group_decays(hp: Mapping[str, Any]) -> tuple[float, float]:
    """Weight decay of the two parameter groups: matrices, then biases and norm gains."""
    return hp["weight_decay"], 0.0


def follow_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    hp: Mapping[str, Any],
) -> None:
    """Make an optimizer and schedule restored from a checkpoint follow ``hp``: lr (the
    schedule's base), betas and weight decay; the learning rate of the next step is then
    ``lr · schedule(step)``, the schedule being this run's (its length from this run's
    ``trainer.max_steps``). Without this a resume keeps the checkpoint's values, whatever the
    command line says."""
    for group, decay in zip(optimizer.param_groups, _group_decays(hp), strict=True):
        group.update(initial_lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=decay)
    scheduler.base_lrs = [hp["lr"]] * len(optimizer.param_groups)
    step = scheduler.last_epoch
    lrs = [
        base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() (logged as train/lr) reports until the next step


def scheduled_lr(
    step: int,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float,
    growths: tuple[Mapping[str, Any], ...],
) -> float:
    """LR multiplier of optimizer step ``step``: ``warmup_cosine × growth_lr_factor``."""
    cosine = warmup_cosine(step, warmup_steps, total_steps, min_ratio)
    return cosine * growth_lr_factor(step, growths)


def growth_lr_factor(step: int, growths: tuple[Mapping[str, Any], ...]) -> float:
    """``Π lr_scale`` of the growths made at or before ``step``, times a linear re-warm-up from
    the last one: ``min(1, (step − step_g + 1) / warmup_steps_g)``; 1 before any growth. With the
    original's rule (lr_scale 1/√2, 100 steps) the LR after g growths tends to 2^(−g/2)× the
    schedule's."""
    past = [g for g in growths if g["step"] <= step]
    if not past:
        return 1.0
    last = past[-1]
    warmup = min(1.0, (step - last["step"] + 1) / last["warmup_steps"])
    return math.prod(g["lr_scale"] for g in past) * warmup


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: ``(step+1)/warmup`` during warmup, then ``min + (1−min)·½(1+cos(π·progress))``
    where progress runs from 0 after warmup to 1 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
