"""BitLMModule: trains a BitTransformerLM (or the byte-level baseline) under Lightning."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.objective import BitsPerByte


class BitLMModule(L.LightningModule):
    """Loss, metrics, optimiser and logging around the model ``build_model(config)`` makes.

    Loss: mean cross-entropy over the data bits (parity targets excluded by default: they are a
    deterministic function of their frame, so learning them teaches nothing about the text).
    Logged: ``train/loss``, ``train/bpb``, ``train/lr``, ``val/loss``, ``val/bpb`` (monitored).
    """

    def __init__(
        self,
        model: ModelConfig | Mapping[str, Any],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        include_parity_loss: bool = False,
    ) -> None:
        super().__init__()
        config = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = config.to_dict()  # plain dict: checkpoints load with weights_only
        self.model = build_model(config)
        self.train_bpb = BitsPerByte()
        self.val_bpb = BitsPerByte()

    def forward(self, bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model(bits)

    def training_step(self, bits: Tensor, batch_idx: int) -> Tensor:
        loss, byte_bits = self.model.score(bits, self.hparams.include_parity_loss)
        self.train_bpb(byte_bits)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bpb", self.train_bpb, prog_bar=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, bits: Tensor, batch_idx: int) -> None:
        loss, byte_bits = self.model.score(bits, self.hparams.include_parity_loss)
        self.val_bpb.update(byte_bits)
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/bpb", self.val_bpb, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (weight decay on matrices only) with linear warmup then cosine decay per step."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "set trainer.max_steps or trainer.max_epochs: the LR schedule needs it"
            )
        optimizer, scheduler = optimizer_and_schedule(self, self.hparams, int(total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def optimizer_and_schedule(
    model: torch.nn.Module, hp: Mapping[str, Any], total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model`` with the module's hyper-parameters ``hp``, and its per-step
    :func:`warmup_cosine` schedule over ``total_steps``.

    Weight decay applies to matrices (embeddings, projections) only: decaying biases and norm
    gains pulls them towards 0, which is not a prior anyone wants.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]))
    schedule = functools.partial(
        warmup_cosine,
        warmup_steps=hp["warmup_steps"],
        total_steps=total_steps,
        min_ratio=hp["min_lr_ratio"],
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: ``(step+1)/warmup`` during warmup, then ``min + (1−min)·½(1+cos(π·progress))``
    where progress runs from 0 after warmup to 1 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
