"""Export the trained network as a self-contained model folder when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from bitlm.hub import save_pretrained


class ModelExport(L.Callback):
    """Write ``dirpath/{config.json,model.safetensors}`` (see ``bitlm.hub``) from the final
    weights (gathered whole when the model is sharded), on rank 0, atomically. This folder is
    what ``bitlm-eval``, ``bitlm-generate`` and the hub upload read: no Lightning, optimiser
    state or pickled code in it."""

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a collective under FSDP2 (every rank sends its shards; rank 0 receives them whole)
        state = get_model_state_dict(
            pl_module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if trainer.is_global_zero:
            save_pretrained(pl_module.model, self.dirpath, state)
            rank_zero_info(f"exported model to {self.dirpath}")
