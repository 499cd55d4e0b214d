"""The safety gate in training: watch the predictions' C and S, and warn, stop or roll back."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from bitlm.core.errors import BitLMError
from bitlm.generation import DriftWatch, SafetyGate

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop", "rollback")


class SafetyGateCallback(L.Callback):
    """Feeds ``telemetry/C`` and ``telemetry/S`` (logged by ``BitLMModule`` every step, averaged
    over ranks here) into a :class:`~bitlm.generation.SafetyGate`; when it fires, on every rank:

    * ``warn``: log a warning and count it (``safety/fired``);
    * ``stop``: stop training (the usual end-of-fit checkpoint and export still run);
    * ``rollback``: restore the weights and optimiser state of the last step the gate passed,
      exactly, multiply the learning rate by ``lr_factor`` from then on, and restart the gate
      (burn-in included) so the restored model is judged afresh. Snapshots are taken every
      ``snapshot_every_n_steps`` steps that the gate judged and passed (never during burn-in),
      and kept in memory only; before the first one (and after the model grew, which drops the
      snapshot: ``AdaptiveExpansion``) a firing gate only warns.

    The gate judges the optimiser steps only (the last micro-batch of each gradient
    accumulation). Drift: a monitored metric whose value moved by more than ``drift_threshold``
    over the last ``drift_window`` steps is logged as a warning and counted once
    (``safety/drift_events``; its window then starts afresh).
    The decision is taken on all ranks together (``reduce_boolean_decision``), like
    ``EarlyStopping``'s; counters and the gate's averages are saved in checkpoints.
    """

    def __init__(
        self,
        action: str = "warn",
        c_floor: float = 0.3,
        s_floor: float = 0.25,
        decay: float = 0.9,
        burn_in: int = 100,
        lr_factor: float = 0.5,
        snapshot_every_n_steps: int = 50,
        drift_threshold: float = 0.2,
        drift_window: int = 10,
        drift_metrics: tuple[str, ...] = ("telemetry/K", "telemetry/C", "telemetry/S"),
    ) -> None:
        if action not in ACTIONS:
            raise BitLMError(f"safety action must be one of {ACTIONS}, got {action!r}")
        if not 0.0 < lr_factor <= 1.0:
            raise BitLMError(f"safety lr_factor must be in (0, 1], got {lr_factor}")
        if snapshot_every_n_steps < 1:
            raise BitLMError("safety snapshot_every_n_steps must be >= 1")
        self.action = action
        self.gate = SafetyGate(c_floor, s_floor, decay, burn_in)
        self.lr_factor = lr_factor
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.drift = DriftWatch(drift_threshold, drift_window)
        self.drift_metrics = tuple(drift_metrics)
        self.drift_events = dict.fromkeys(self.drift_metrics, 0)
        self.fired = 0
        self.rollbacks = 0
        self.snapshot: dict[str, Any] | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: no optimiser step to judge
        metrics = trainer.callback_metrics
        if "telemetry/C" not in metrics or "telemetry/S" not in metrics:
            raise BitLMError(
                "the safety gate reads telemetry/C and telemetry/S, which only bit models log: "
                "drop callbacks=safety for the byte-level baseline"
            )
        values = {name: float(metrics[name]) for name in self.drift_metrics if name in metrics}
        c, s = _rank_mean(trainer, [float(metrics["telemetry/C"]), float(metrics["telemetry/S"])])
        self._watch_drift(values, trainer.global_step)
        fired = trainer.strategy.reduce_boolean_decision(self.gate.update(c, s), all=False)
        if self.snapshot is not None and self.snapshot["model_config"] != pl_module.model.config:
            self.snapshot = None  # taken before the model grew: its weights fit no longer
        pl_module.log_dict({"safety/ema_C": self.gate.ema_c, "safety/ema_S": self.gate.ema_s})
        if fired:
            self._act(trainer, pl_module)
        elif self.action == "rollback" and self._snapshot_due(trainer.global_step):
            self.snapshot = _snapshot(trainer, pl_module)
        pl_module.log_dict(
            {
                "safety/fired": float(self.fired),
                "safety/drift_events": float(sum(self.drift_events.values())),
            }
        )

    def _snapshot_due(self, step: int) -> bool:
        """A passing step after burn-in: the first such one, then every n-th step."""
        judged = self.gate.steps > self.gate.burn_in
        return judged and (self.snapshot is None or step % self.snapshot_every_n_steps == 0)

    def _watch_drift(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            change = self.drift.update(name, value)
            if change is not None:
                self.drift_events[name] += 1
                log.warning(
                    f"step {step}: {name} moved {change:+.3f} over the last "
                    f"{self.drift.window} steps (drift threshold {self.drift.threshold})"
                )

    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fired += 1
        gate = self.gate
        message = (
            f"safety gate fired at step {trainer.global_step}: EMA C {gate.ema_c:.3f} "
            f"(floor {gate.c_floor}), EMA S {gate.ema_s:.3f} (floor {gate.s_floor})"
        )
        if self.action == "stop":
            log.warning(f"{message}; stopping")
            trainer.should_stop = True
        elif self.action == "rollback" and self.snapshot is not None:
            _restore(trainer, pl_module, self.snapshot, self.lr_factor)
            self.rollbacks += 1
            gate.restart()
            log.warning(
                f"{message}; rolled back to step {self.snapshot['step']}, learning rate × "
                f"{self.lr_factor}"
            )
        else:
            log.warning(message)

    def state_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate.state_dict(),
            "history": self.drift.state_dict(),
            "drift_events": dict(self.drift_events),
            "fired": self.fired,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.gate.load_state_dict(state_dict["gate"])
        self.drift.load_state_dict(state_dict["history"])
        self.drift_events.update(state_dict["drift_events"])
        self.fired = state_dict["fired"]
        self.rollbacks = state_dict["rollbacks"]


def _rank_mean(trainer: L.Trainer, values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
    return trainer.strategy.reduce(tensor, reduce_op="mean").tolist()


def _snapshot(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """Copies of the module's weights and every optimiser's state, on the CPU."""
    return {
        "step": trainer.global_step,
        "model_config": pl_module.model.config,
        "model": {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()},
        "optimizers": [_to_cpu(opt.state_dict()) for opt in trainer.optimizers],
    }


def _restore(
    trainer: L.Trainer, pl_module: L.LightningModule, snapshot: dict[str, Any], lr_factor: float
) -> None:
    """Load the snapshot exactly, then scale every learning rate (and each per-step schedule's
    base rates, so the schedule keeps the lower rate) by ``lr_factor``."""
    pl_module.load_state_dict(snapshot["model"])
    for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"], strict=True):
        optimizer.load_state_dict(state)
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] *= lr_factor
    for config in trainer.lr_scheduler_configs:
        config.scheduler.base_lrs = [lr * lr_factor for lr in config.scheduler.base_lrs]


def _to_cpu(state: Any) -> Any:
    """A copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_cpu(v) for v in state]
    return state
