"""Export the trained network as a self-contained model folder when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from bitlm.hub import save_pretrained


class ModelExport(L.Callback):
    """Write ``dirpath/{config.json,model.safetensors}`` (see ``bitlm.hub``) from the final
    weights, on rank 0, atomically. This folder is what ``bitlm-eval``, ``bitlm-generate`` and
    the hub upload read: no Lightning, optimiser state or pickled code in it."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_pretrained(pl_module.model, self.dirpath)
        rank_zero_info(f"exported model to {self.dirpath}")
