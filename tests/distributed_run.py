"""Train a tiny reversible model for a few steps under one strategy; write what the
distributed tests compare (run as a script: DDP and FSDP2 launchers re-run ``sys.argv``).

    python tests/distributed_run.py STRATEGY DEVICES BATCH_SIZE TRUNK OUT.json [grow]

STRATEGY: ``single`` (one process), ``ddp``, ``ddp_spawn`` or ``fsdp2`` (``FSDP2Strategy`` over
gloo). ``grow``: validate every 2 steps under ``AdaptiveExpansion`` with every validation after
the first a plateau, so the model grows deeper at step 4 and wider at step 6 (of 8).
OUT.json: the global (all-rank mean) loss of every step, the fraction of the model's parameter
elements each rank holds, and the path of the final weights (``OUT.pt``, rank 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
from torch.distributed.tensor import DTensor

from bitlm.training.callbacks.adaptive_expansion import AdaptiveExpansion
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from bitlm.training.strategies import FSDP2Strategy

STEPS = 6


class Record(L.Callback):
    """The loss averaged over ranks (= the loss of the global batch: equal-sized rank batches)
    at every step, and how much of the model this rank holds."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.losses: list[float] = []
        self.held_fraction = 1.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list(pl_module.model.parameters())
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        self.held_fraction = local / sum(p.numel() for p in params)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses.append(float(loss))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # here, in the training process: under ddp_spawn the launcher's copy never trains
        if trainer.is_global_zero:
            self.out.write_text(json.dumps({"losses": self.losses, "held": self.held_fraction}))


def main(strategy: str, devices: int, batch_size: int, trunk: str, out: Path, grow: bool) -> None:
    L.seed_everything(0)
    model = dict(d_model=64, n_heads=2, n_layers=2, max_seq_len=288, trunk=trunk, reversible=True)
    module = BitLMModule(model, scheduler={"warmup_steps": 2})
    data = BitDataModule(seq_len=288, batch_size=batch_size, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=FSDP2Strategy() if strategy == "fsdp2" else "auto" if devices == 1 else strategy,
        max_steps=STEPS + 2 * grow,
        precision="32-true",
        gradient_clip_val=1.0,
        limit_val_batches=1 if grow else 0,
        val_check_interval=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out)] + [_expansion()] * grow,
    )
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(out.with_suffix(".ckpt"))  # sharded under fsdp2: a folder


def _expansion() -> AdaptiveExpansion:
    order = ("depth", "width")
    return AdaptiveExpansion(
        min_delta=100.0, patience=1, order=order, max_layers=4, max_d_model=128
    )


if __name__ == "__main__":
    strategy, devices, batch_size, trunk, out, *grow = sys.argv[1:]
    main(strategy, int(devices), int(batch_size), trunk, Path(out), grow == ["grow"])
