"""``last.ckpt``, the state to resume from, and ``best-step*.ckpt``: only ever healthy weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from bitlm.core.files import remove_path, replace_dir
from bitlm.training.health import is_healthy


class LastCheckpoint(ModelCheckpoint):
    """Write ``dirpath/last.ckpt`` every ``every_n_train_steps`` optimizer steps and once more
    when training ends (``max_steps``, ``max_time`` or an early stop), replacing it each time.

    A periodic save holds weights no step has judged yet: an update that ruins the weights
    shows only in the losses of the steps after it. So it is written to
    ``.last.unconfirmed.ckpt`` and renamed onto ``last.ckpt`` only once the next optimizer step
    was judged healthy (``bitlm.training.health``); after a bad step it is deleted, and while
    training is unhealthy nothing is saved. ``last.ckpt`` is therefore always a state to
    recover from. The save at the end (and at a preemption: ``Preemption``) takes no verdict:
    it is made when training is healthy.

    Lightning's ``save_last`` skips the end-of-training save when a periodic one already ran, so
    ``last.ckpt`` could lag up to N − 1 steps behind the weights that were exported. Saves run in
    every training process (a sharded checkpoint is a collective), which also makes the end
    right under ``ddp_spawn``, where the launching process never trained.
    """

    UNCONFIRMED = ".last.unconfirmed.ckpt"

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 100) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=False, every_n_epochs=0)
        self.every_n_steps = every_n_train_steps
        self.unconfirmed_step: int | None = None  # the step of the save awaiting a verdict
        self.saved_step = -1  # the step of the last save

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}.ckpt"

    @property
    def unconfirmed_path(self) -> Path:
        return Path(self.dirpath) / self.UNCONFIRMED

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """An unconfirmed save a killed run left behind is never confirmed: remove it."""
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero:
            remove_path(self.unconfirmed_path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step
        if self.unconfirmed_step is not None and step > self.unconfirmed_step:
            self._settle(trainer, confirmed=is_healthy(pl_module))
        due = self.every_n_steps > 0 and step % self.every_n_steps == 0 and step > 0
        if due and step != self.saved_step and is_healthy(pl_module):
            trainer.save_checkpoint(self.unconfirmed_path, weights_only=False)
            self.saved_step = step
            self.unconfirmed_step = step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_now(trainer, pl_module)

    def save_now(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Make the current state ``last.ckpt`` if training is healthy (training ended, or a
        preemption stops it: ``Preemption``); True when it was. A save awaiting a verdict is
        settled first: it is either this state or one the later steps confirmed. The state is
        written to the unconfirmed path and renamed, so that a kill mid-save leaves the previous
        ``last.ckpt`` whole even when it is a sharded checkpoint's folder, which the strategy
        writes file by file."""
        healthy = is_healthy(pl_module)
        if self.unconfirmed_step is not None:
            self._settle(trainer, confirmed=healthy)
        if healthy and trainer.global_step != self.saved_step:
            trainer.save_checkpoint(self.unconfirmed_path, weights_only=False)
            self.saved_step = trainer.global_step
            self._settle(trainer, confirmed=True)
        return healthy

    def _settle(self, trainer: L.Trainer, confirmed: bool) -> None:
        """Rename the unconfirmed save onto ``last.ckpt`` (a file, or a sharded checkpoint's
        folder), or delete it; rank 0 does it once every rank has written its part."""
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            if not confirmed:
                remove_path(self.unconfirmed_path)
            elif self.unconfirmed_path.is_dir():
                replace_dir(self.unconfirmed_path, self.last_path)
            else:
                os.replace(self.unconfirmed_path, self.last_path)
        trainer.strategy.barrier()
        self.unconfirmed_step = None


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the best checkpoint by ``val/bpb``) that saves only
    while training is healthy: a validation of ruined weights is never "the best so far",
    even when it is the first."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if is_healthy(pl_module):
            super().on_train_batch_end(trainer, pl_module, *args)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_healthy(pl_module):
            super().on_validation_end(trainer, pl_module)
