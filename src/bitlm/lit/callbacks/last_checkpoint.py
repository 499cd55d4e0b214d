"""``last.ckpt``: the state to resume from, kept current during training and at its end."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Write ``dirpath/last.ckpt`` every ``every_n_train_steps`` optimizer steps and once more
    when training ends (``max_steps``, ``max_time`` or an early stop), replacing it each time.

    Lightning's ``save_last`` skips the end-of-training save when a periodic one already ran, so
    ``last.ckpt`` could lag up to N − 1 steps behind the weights that were exported. The save at
    the end runs in every training process (a sharded checkpoint is a collective), which also
    makes it right under ``ddp_spawn``, where the launching process never trained.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 100) -> None:
        super().__init__(
            dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}.ckpt")
