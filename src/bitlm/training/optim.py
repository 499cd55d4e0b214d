"""The optimiser and its learning-rate schedule, both injected by Hydra as ``_partial_``
configs (``module.optimizer``, ``module.scheduler``), with growth re-warm-ups and a restored
optimiser made to follow the run's settings on resume.

Default: ``torch.optim.AdamW`` (lr 1e-3, betas (0.9, 0.95), weight decay 0.1 on matrices
only) and :func:`warmup_cosine`. Any ``torch.optim`` optimiser works
(``module.optimizer._target_=torch.optim.SGD +module.optimizer.momentum=0.9``); a schedule is a
function ``(step, total_steps, **settings) -> LR multiplier``. Configs are kept as plain dicts
(hyper-parameters, checkpoints load with ``weights_only``) and instantiated when the optimiser
is built.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate

DEFAULT_OPTIMIZER: dict[str, Any] = {
    "_target_": "torch.optim.AdamW",
    "_partial_": True,
    "lr": 1e-3,
    "betas": [0.9, 0.95],
    "weight_decay": 0.1,
}
DEFAULT_SCHEDULER: dict[str, Any] = {
    "_target_": "bitlm.training.optim.warmup_cosine",
    "_partial_": True,
    "warmup_steps": 100,
    "min_lr_ratio": 0.1,
}


def as_config(spec: Mapping[str, Any] | functools.partial | None, default: Mapping[str, Any]):
    """The plain config dict of an optimiser or schedule ``spec``: a Hydra config (a mapping
    with ``_target_``), settings that update ``default`` (a mapping without one: ``{"lr":
    3e-3}``), or the ``functools.partial`` Hydra makes of a ``_partial_`` config."""
    if spec is None:
        return dict(default)
    if isinstance(spec, functools.partial):
        target = f"{spec.func.__module__}.{spec.func.__qualname__}"
        return {"_target_": target, "_partial_": True, **spec.keywords}
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
    return spec if "_target_" in spec else {**default, **spec}


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a config (``_target_`` and the other Hydra keys left out)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k[0] != "_"}


def build_optimizer(
    model: torch.nn.Module, config: Mapping[str, Any], precision: str = "32-true"
) -> torch.optim.Optimizer:
    """The optimiser of ``config`` over ``model``'s trainable parameters in two groups:
    matrices (embeddings, projections) with the config's weight decay, biases and norm gains
    without (decaying them pulls them towards 0, which is not a prior anyone wants). AdamW
    gets its fused kernel where :func:`fused_adamw` allows it (Lightning's ``precision``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    factory = instantiate({**config, "_partial_": True}, _convert_="all")
    extra = {}
    if factory.func is torch.optim.AdamW and "fused" not in config:
        extra["fused"] = fused_adamw({p.device.type for p in params}, precision)
    optimizer = factory(groups, **extra)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # LambdaLR's base, needed to start at start_step
    return optimizer


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: Mapping[str, Any],
    total_steps: int,
    growths: Sequence[Mapping[str, Any]] = (),
    start_step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``config`` × :func:`growth_lr_factor` over ``total_steps``, its
    next step being ``start_step`` (a schedule rebuilt after a growth continues where it was)."""
    shape = instantiate({**config, "_partial_": True}, _convert_="all")
    multiplier = functools.partial(
        scheduled_lr, shape=shape, total_steps=total_steps, growths=tuple(growths)
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier, last_epoch=start_step - 1)


def lightning_optimizers(
    module: torch.nn.Module,
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    growths: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What ``configure_optimizers`` of a LightningModule returns: ``optimizer`` over its
    parameters and ``scheduler`` over the trainer's estimated steps, stepped every batch and
    continuing at the module's ``global_step`` (a rebuild after a growth)."""
    trainer = module.trainer
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError("set trainer.max_steps or trainer.max_epochs: the LR schedule needs it")
    built = build_optimizer(module, optimizer, str(trainer.precision))
    schedule = build_scheduler(built, scheduler, int(total), growths, module.global_step)
    return {"optimizer": built, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def fused_adamw(device_types: set[str], precision: str) -> bool | None:
    """True (AdamW's fused kernel: one launch for all parameters, the fastest AdamW in torch)
    when every parameter is on CUDA, except under fp16 autocast: its gradient scaler cannot
    unscale the gradients before Lightning clips them when the optimizer unscales them itself.
    None elsewhere (torch picks its default, foreach)."""
    return (device_types == {"cuda"} and not precision.startswith("16")) or None


def follow_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    config: Mapping[str, Any],
) -> None:
    """Make an optimizer and schedule restored from a checkpoint follow this run's optimiser
    ``config``: lr (the schedule's base), weight decay (matrices only) and every other setting
    the param groups hold (betas, momentum …); the learning rate of the next step is then
    ``lr · schedule(step)``, the schedule being this run's (its length from this run's
    ``trainer.max_steps``). Without this a resume keeps the checkpoint's values, whatever the
    command line says."""
    given = settings(config)
    for index, group in enumerate(optimizer.param_groups):
        for name, value in given.items():
            if name == "lr":
                group["initial_lr"] = value
            elif name == "weight_decay":
                group[name] = value if index == 0 else 0.0
            elif name in group:
                group[name] = value
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    step = scheduler.last_epoch
    lrs = [
        base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() (logged as train/lr) reports until the next step


def scheduled_lr(
    step: int,
    shape: Callable[..., float],
    total_steps: int,
    growths: tuple[Mapping[str, Any], ...],
) -> float:
    """LR multiplier of optimizer step ``step``: ``shape(step, total_steps) × growth_lr_factor``."""
    return shape(step, total_steps=total_steps) * growth_lr_factor(step, growths)


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


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int = 100, min_lr_ratio: float = 0.1
) -> float:
    """LR multiplier: ``(step+1)/warmup`` during warmup, then ``min + (1−min)·½(1+cos(π·progress))``
    where progress runs from 0 after warmup to 1 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
