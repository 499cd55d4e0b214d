"""Export the trained network as a self-contained model folder when training ends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from bitlm.core.errors import BitLMError
from bitlm.io import SCHEMES, quantize, save_pretrained
from bitlm.model import build_model


class ModelExport(L.Callback):
    """Write ``dirpath/{config.json,model.safetensors}`` (see ``bitlm.io.export``) from the final
    weights (gathered whole when the model is sharded), on rank 0, atomically. This folder is
    what ``bitlm-eval``, ``bitlm-generate`` and the hub upload read: no Lightning, optimiser
    state or pickled code in it.

    ``quantize``: also write ``<dirpath>_<scheme>`` for each ``bitlm.io.quantize`` scheme
    (``int8``, ``int4``) — the same weights quantized for CPU inference. After
    ``module.qat=true`` training, ``int4`` is the converted QAT model.

    The model card and config.json record ``export_metrics`` (a quantized export only its step:
    the float model's numbers are not its own).
    """

    def __init__(self, dirpath: str | Path, quantize: Sequence[str] = ()) -> None:
        unknown = sorted(set(quantize) - set(SCHEMES))
        if unknown:
            raise BitLMError(
                f"callbacks.model_export.quantize: unknown scheme(s) {unknown}; "
                f"choose from {list(SCHEMES)}"
            )
        self.dirpath = Path(dirpath)
        self.quantize = list(quantize)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = full_state(pl_module)
        if not trainer.is_global_zero:
            return
        metrics = export_metrics(trainer)
        save_pretrained(pl_module.model, self.dirpath, state, metrics=metrics)
        rank_zero_info(f"exported model to {self.dirpath}")
        for scheme in self.quantize:
            model = build_model(pl_module.model.config)
            model.load_state_dict(state)  # plain float layers, whatever QAT inserted
            target = self.dirpath.with_name(f"{self.dirpath.name}_{scheme}")
            # the float model's metrics would misreport it
            save_pretrained(quantize(model, scheme), target, metrics={"step": trainer.global_step})
            rank_zero_info(f"exported the {scheme} model to {target}")


def full_state(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU. A collective under FSDP2: every rank must call
    it (each sends its shards; rank 0 receives them whole)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(pl_module.model, options=options)


def export_metrics(trainer: L.Trainer) -> dict[str, float]:
    """What an export records about the model: the latest validation metrics (``val/bpb``,
    ``val/K``, ``val/C``, ``val/S`` …), the training loss, and the step."""
    metrics = {
        name: float(value)
        for name, value in trainer.callback_metrics.items()
        if name.startswith("val/") or name == "train/loss"
    }
    return metrics | {"step": trainer.global_step}
