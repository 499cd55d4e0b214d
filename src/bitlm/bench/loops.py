"""One training step timed two ways: under Lightning's ``Trainer`` and in a hand-written loop
(autocast forward, the objective's loss, backward, the optimiser), and the utilisation
(FLOPs/s, MFU) a timing implies. What the throughput, telemetry, data and compare
benchmarks time."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from bitlm.bench.measure import synchronize
from bitlm.model.config import ModelConfig
from bitlm.model.flops import batch_flops
from bitlm.training import optim
from bitlm.training.module import BitLMModule

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}
"""Precisions both loops implement identically (the plain loop through ``torch.autocast``)."""


class _StepTimer(L.Callback):
    """Wall-clock time from the start of batch ``untimed`` to the end of batch ``last``."""

    def __init__(self, untimed: int, last: int, device: torch.device) -> None:
        self.untimed, self.last, self.device = untimed, last, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.untimed:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            synchronize(self.device)
            self.end = time.perf_counter()


@dataclasses.dataclass(frozen=True)
class TimedRun:
    """What both loops time: training steps on ``batches[untimed:]`` (the first ``untimed``
    build kernels and fill caches) of the model and objective ``BitLMModule(config,
    **module_kwargs)`` builds, at ``precision`` on ``device``."""

    config: ModelConfig
    batches: list[torch.Tensor]
    precision: str
    untimed: int
    device: torch.device
    module_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def module(self) -> BitLMModule:
        return BitLMModule(self.config, **self.module_kwargs)


def lightning_seconds(
    run: TimedRun,
    callbacks: list[L.Callback] = (),
    logger: Logger | bool = False,
    batch_shape: tuple[int, int] | None = None,
) -> float:
    """Seconds ``Trainer.fit`` spends on the timed batches of ``run`` (one optimiser step each),
    with ``callbacks`` and ``logger`` besides the timer; with ``batch_shape``, the module knows
    the model FLOPs of its batches, as in a run (``BitLMModule.count_flops``)."""
    module = run.module()
    module.count_flops(batch_shape)
    timer = _StepTimer(run.untimed, len(run.batches) - 1, run.device)
    trainer = L.Trainer(
        accelerator=run.device.type,
        devices=1,
        precision=run.precision,
        max_steps=len(run.batches),
        logger=logger,
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():  # training only, on purpose
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        trainer.fit(module, train_dataloaders=DataLoader(run.batches, batch_size=None))
    return timer.end - timer.start


def plain_step(
    config: ModelConfig,
    precision: str,
    total_steps: int,
    device: torch.device,
    module_kwargs: dict[str, Any],
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], None]]:
    """The model and one training step of a hand-written loop (autocast forward and loss,
    backward, AdamW, LR schedule over ``total_steps``): the work of ``BitLMModule.training_step``
    minus the framework. The model comes from a ``BitLMModule`` built the same way, so loops
    started under the same seed start from the same weights."""
    module = BitLMModule(config, **module_kwargs)
    hp, model = module.hparams, module.model.to(device).train()
    optimizer = optim.build_optimizer(model, hp.optimizer, precision)
    scheduler = optim.build_scheduler(optimizer, hp.scheduler, total_steps)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step(batch: torch.Tensor) -> None:
        with autocast:
            loss = module.objective.training_step(model, batch.to(device), module.knobs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    return model, step


def plain_seconds(run: TimedRun) -> float:
    """Seconds the plain loop (:func:`plain_step`) spends on the timed batches of ``run``."""
    _, step = plain_step(run.config, run.precision, len(run.batches), run.device, run.module_kwargs)
    start = 0.0
    for index, batch in enumerate(run.batches):
        if index == run.untimed:
            synchronize(run.device)
            start = time.perf_counter()
        step(batch)
    synchronize(run.device)
    return time.perf_counter() - start


def utilisation(
    config: ModelConfig,
    batch_size: int,
    steps_per_s: float,
    device: torch.device,
    precision: str,
) -> dict[str, float | None]:
    """Model FLOPs of a training step of ``batch_size`` full windows (``bitlm.model.flops``),
    the FLOPs/s at ``steps_per_s``, and MFU = FLOPs/s ÷ the device's peak for the precision's
    dtype (Lightning's table of NVIDIA GPUs; None where it has no figure, as for CPUs)."""
    flops = batch_flops(config, batch_size, config.max_seq_len, training=True)
    peak = get_available_flops(device, PRECISIONS[precision] or torch.float32)
    return {
        "flops_per_step": flops,
        "flops_per_s": flops * steps_per_s,
        "mfu": flops * steps_per_s / peak if peak else None,
    }
