"""Adaptive expansion: grow the model when validation stops improving."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig
from bitlm.model.expand import carry_optimizer_state, grow_to
from bitlm.training.protocols import Growable

log = logging.getLogger(__name__)

KINDS = ("depth", "width", "context")


class AdaptiveExpansion(L.Callback):
    """Watches ``monitor`` (lower is better) after every validation, like Lightning's
    ``EarlyStopping``: a value below ``best − min_delta`` is an improvement; ``patience``
    validations in a row without one are a plateau, and a plateau grows the model instead of
    stopping it, function-preservingly (``bitlm.model.expand.grow_to``), by the next kind in
    ``order`` (cycling, skipping kinds at their limit):

    * ``depth``: ``+layers_step`` blocks, up to ``max_layers``;
    * ``width``: d_model, heads and d_ff × ``width_factor``, up to ``max_d_model``;
    * ``context``: max_seq_len × ``context_factor``, up to ``max_seq_len`` (the data windows
      must be that long: ``data.seq_len``; until then the model reads their first bits).

    After a growth the optimizer is rebuilt over the new parameters with the old ones' state
    carried over (``carry_optimizer_state``), the LR schedule is scaled by ``1/lr_decay`` (√2:
    the original's rule) and warms up again over ``warmup_steps`` (``BitLMModule.record_growth``),
    DDP is re-wrapped around the new parameters, and ``expansion/*`` (layers, width, context,
    parameters) is logged. Checkpoints hold the grown architecture (the module rebuilds it on
    resume) and this callback's counters, so a resumed run grows exactly as an uninterrupted one.
    Not under FSDP2 (``BitLMModule.install_model``) nor a spawning launcher (``ddp_spawn``:
    Lightning loads the workers' weights into the launcher's ungrown model).
    """

    def __init__(
        self,
        monitor: str = "val/bpb",
        min_delta: float = 0.01,
        patience: int = 2,
        order: tuple[str, ...] = KINDS,
        layers_step: int = 2,
        max_layers: int = 8,
        width_factor: int = 2,
        max_d_model: int = 512,
        context_factor: int = 2,
        max_seq_len: int | None = None,
        lr_decay: float = math.sqrt(2),
        warmup_steps: int = 100,
        seed: int = 0,
    ) -> None:
        unknown = sorted(set(order) - set(KINDS))
        if not order or unknown:
            raise BitLMError(f"adaptive expansion order must list kinds of {KINDS}, got {order}")
        for name, value in {
            "patience": patience,
            "layers_step": layers_step,
            "warmup_steps": warmup_steps,
            "width_factor": width_factor - 1,
            "context_factor": context_factor - 1,
        }.items():
            if not isinstance(value, int) or value < 1:
                raise BitLMError(f"adaptive expansion {name} is too small or not an integer")
        if min_delta < 0 or lr_decay < 1:
            raise BitLMError("adaptive expansion needs min_delta >= 0 and lr_decay >= 1")
        self.monitor, self.min_delta, self.patience = monitor, min_delta, patience
        self.order = tuple(order)
        self.layers_step, self.max_layers = layers_step, max_layers
        self.width_factor, self.max_d_model = width_factor, max_d_model
        self.context_factor, self.max_seq_len = context_factor, max_seq_len
        self.lr_decay, self.warmup_steps, self.seed = lr_decay, warmup_steps, seed
        self.best = math.inf
        self.wait = 0
        self.turn = 0  # index into order of the next kind to try

    @property
    def context_limit(self) -> int | None:
        """The longest context (bits) this callback may grow the model to; None: it does not
        grow the context."""
        return self.max_seq_len if "context" in self.order else None

    def next_config(self, config: ModelConfig) -> ModelConfig | None:
        """The architecture of the next growth from ``config``, or None at every limit; advances
        the turn past the kinds it skipped and the one it picked."""
        for _ in range(len(self.order)):
            kind = self.order[self.turn % len(self.order)]
            self.turn += 1
            target = self._grown(kind, config)
            if target is not None:
                return target
        return None

    def _grown(self, kind: str, c: ModelConfig) -> ModelConfig | None:
        if kind == "depth":
            layers = min(self.max_layers, c.n_layers + self.layers_step)
            return dataclasses.replace(c, n_layers=layers) if layers > c.n_layers else None
        if kind == "width":
            width = min(self.max_d_model, c.d_model * self.width_factor)
            if width <= c.d_model or width % c.head_dim:
                return None
            d_ff = c.d_ff * width // c.d_model
            return dataclasses.replace(c, d_model=width, n_heads=width // c.head_dim, d_ff=d_ff)
        context = min(self.context_limit or c.max_seq_len, c.max_seq_len * self.context_factor)
        return dataclasses.replace(c, max_seq_len=context) if context > c.max_seq_len else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            raise BitLMError(
                "adaptive expansion cannot run under a spawning strategy (trainer=ddp_sim, "
                "strategy=ddp_spawn): the launching process gets the trained weights back into "
                "its own, ungrown model. Use trainer=ddp (processes launched as scripts)"
            )
        if not isinstance(pl_module, Growable):
            raise BitLMError(
                f"adaptive expansion grows a BitLMModule's model; {type(pl_module).__name__} "
                "cannot install a grown model: drop callbacks=expansion"
            )
        config = pl_module.model.config
        if config.use_act and "depth" in self.order:
            raise BitLMError(
                "adaptive expansion cannot grow an ACT model (model.use_act) deeper: drop "
                "depth from callbacks.adaptive_expansion.order"
            )
        seq_len = getattr(getattr(trainer, "datamodule", None), "hparams", {}).get("seq_len")
        limit = self.context_limit
        if limit and seq_len is not None and seq_len < limit:
            raise BitLMError(
                f"adaptive expansion may grow the context to {limit} bits, but the "
                f"data windows hold {seq_len}: set data.seq_len={limit}"
            )
        self._log_architecture(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise BitLMError(
                f"adaptive expansion monitors {self.monitor!r}, which validation did not log; "
                f"logged: {sorted(trainer.callback_metrics)}"
            )
        current = float(trainer.callback_metrics[self.monitor])
        if current < self.best - self.min_delta:
            self.best, self.wait = current, 0
            return
        self.wait += 1
        plateau = trainer.strategy.reduce_boolean_decision(self.wait >= self.patience, all=False)
        if plateau:
            self.wait, self.best = 0, current  # the grown model starts where this one stands
            target = self.next_config(pl_module.model.config)
            if target is not None:
                self.grow(trainer, pl_module, target)

    def grow(self, trainer: L.Trainer, pl_module: L.LightningModule, target: ModelConfig) -> None:
        """Replace the model by its growth to ``target`` and the optimizer by one over the new
        parameters (the old state carried), under the active strategy."""
        old_model, old_optimizer = pl_module.model, trainer.optimizers[0]
        generator = torch.Generator().manual_seed(self.seed + trainer.global_step)
        growth = grow_to(old_model, target, generator)
        pl_module.install_model(growth.model)
        pl_module.record_growth(1 / self.lr_decay, self.warmup_steps)
        if isinstance(trainer.strategy, DDPStrategy):  # DDP's buckets hold the old parameters
            trainer.strategy.model = pl_module
            trainer.strategy.configure_ddp()
        trainer.strategy.setup_optimizers(trainer)
        carry_optimizer_state(old_optimizer, old_model, trainer.optimizers[0], growth)
        old = old_model.config
        log.info(
            "step %d: %s plateaued; grew the model: layers %d → %d, d_model %d → %d, "
            "context %d → %d bits",
            trainer.global_step,
            self.monitor,
            old.n_layers,
            target.n_layers,
            old.d_model,
            target.d_model,
            old.max_seq_len,
            target.max_seq_len,
        )
        self._log_architecture(trainer, pl_module)

    @staticmethod
    def _log_architecture(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        c = pl_module.model.config
        metrics = {
            "expansion/n_layers": c.n_layers,
            "expansion/d_model": c.d_model,
            "expansion/max_seq_len": c.max_seq_len,
            "expansion/parameters": sum(p.numel() for p in pl_module.model.parameters()),
            "expansion/growths": len(pl_module.growths),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "turn": self.turn}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.wait, self.turn = (state_dict[k] for k in ("best", "wait", "turn"))
