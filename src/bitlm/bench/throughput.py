"""train-throughput: what Lightning costs. The same model, data, optimiser and schedule, trained
by ``Trainer.fit`` on a ``BitLMModule`` and by a plain PyTorch loop; overhead = 1 − ratio of
their steady-state rates (steps after the warm-up ones)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from bitlm.bench.measure import corpus_batches, median, synchronize
from bitlm.errors import BitLMError
from bitlm.lit.module import BitLMModule
from bitlm.lit.optimization import optimizer_and_schedule
from bitlm.model.config import ModelConfig

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


def lightning_seconds(
    config: ModelConfig,
    batches: list[torch.Tensor],
    precision: str,
    untimed: int,
    device: torch.device,
    module_kwargs: dict[str, Any],
    callbacks: list[L.Callback] = (),
    logger: Logger | bool = False,
) -> float:
    """Seconds ``Trainer.fit`` spends on ``batches[untimed:]`` (one optimiser step per batch),
    with ``callbacks`` and ``logger`` besides the timer."""
    module = BitLMModule(config, **module_kwargs)
    timer = _StepTimer(untimed, len(batches) - 1, device)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=len(batches),
        logger=logger,
        callbacks=[*callbacks, timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():  # training only, on purpose
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return timer.end - timer.start


def plain_seconds(
    config: ModelConfig,
    batches: list[torch.Tensor],
    precision: str,
    untimed: int,
    device: torch.device,
    module_kwargs: dict[str, Any],
) -> float:
    """Seconds a hand-written loop (autocast, backward, AdamW, LR schedule) spends on
    ``batches[untimed:]``: the same work as ``BitLMModule.training_step`` minus the framework.
    The model comes from a ``BitLMModule`` built the same way, so both loops start from the
    same weights under the same seed."""
    module = BitLMModule(config, **module_kwargs)
    hp, model = module.hparams, module.model.to(device).train()
    optimizer, scheduler = optimizer_and_schedule(model, hp, len(batches))
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    start = 0.0
    for index, batch in enumerate(batches):
        if index == untimed:
            synchronize(device)
            start = time.perf_counter()
        with autocast:
            loss, _ = model.score(batch.to(device), hp.include_parity_loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    synchronize(device)
    return time.perf_counter() - start


def run(
    config: ModelConfig,
    device: torch.device,
    precisions: list[str],
    batch_size: int,
    steps: int,
    untimed_steps: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """Median positions/s and bytes/s of both loops per precision, and the overhead.

    Positions are what the main stack runs over: 9 per byte for the flat bit model, 1 for the
    hierarchical trunk and the byte model.
    The module's own defaults (learning rate, warm-up, …) apply to both loops.
    """
    unsupported = sorted(set(precisions) - set(PRECISIONS))
    if unsupported:
        raise BitLMError(f"precisions {unsupported} not supported here: use {list(PRECISIONS)}")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per fit
    batches = corpus_batches(steps, batch_size, config.max_seq_len, seed)
    n_bytes = (steps - untimed_steps) * batch_size * config.max_bytes
    positions_per_byte = config.trunk_positions // config.max_bytes
    results = {}
    for precision in precisions:
        seconds: dict[str, list[float]] = {"lightning": [], "plain": []}
        for _ in range(repeats):  # alternate, so drift in machine speed hits both alike
            for name, loop in (("lightning", lightning_seconds), ("plain", plain_seconds)):
                torch.manual_seed(seed)
                seconds[name].append(loop(config, batches, precision, untimed_steps, device, {}))
        bytes_per_s = {name: n_bytes / median(s) for name, s in seconds.items()}
        results[precision] = {
            **{
                name: {"positions_per_s": rate * positions_per_byte, "bytes_per_s": rate}
                for name, rate in bytes_per_s.items()
            },
            "overhead": 1.0 - bytes_per_s["lightning"] / bytes_per_s["plain"],
            "seconds": seconds,
        }
    return {
        "repeats": repeats,
        "batch_size": batch_size,
        "seq_len": config.max_seq_len,
        "steps": steps,
        "untimed_steps": untimed_steps,
        "results": results,
    }
