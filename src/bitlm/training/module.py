"""BitLMModule: the training loop around a model and its objective, under Lightning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bitlm.core.bits import FRAME_BITS
from bitlm.io import load_model
from bitlm.model.config import ModelConfig
from bitlm.objectives import Knobs, Output, check_knobs, objective_for
from bitlm.objectives.regularisers import (
    KCSLoss,
    KCSTelemetry,
    PonderCost,
    check_kcs_options,
    resolve_lambda_S,
    symbiosis_reference,
)
from bitlm.telemetry.metrics import marginal_reference
from bitlm.training import optim, resume
from bitlm.training.health import TrainingHealth, check_health_options, guard_step
from bitlm.training.host import ModelHost

FINAL_STEP_KEY = "trainer/final_step"
"""``trainer.callback_metrics`` key of the optimizer steps taken when training ended."""


class BitLMModule(ModelHost):
    """Trains ``build_model(model)`` on the objective its config chooses (``bitlm.objectives``:
    next bit, next byte or masked denoising); logs what it returns as ``<stage>/<metric>``.

    The loss adds ``ponder_weight`` × ACT's ponder cost and, for objectives that predict bits,
    ``λ_K·|K − K_data| + λ_C·|C − C_data| + λ_S·(1 − S)`` (``objectives.regularisers``; λ 0 by
    default). ``telemetry`` logs ``telemetry/{K,C,S,K_data,C_data}`` every step (the safety gate
    reads them) and ``val/{K,C,S}``; S compares with the training data's per-position marginals
    (``symbiosis_reference=marginal``, saved with the checkpoint) or a frozen
    ``reference_model``. ``knobs`` (``Knobs``) are what curricula and ramps move.

    ``optimizer`` / ``scheduler``: ``bitlm.training.optim`` (AdamW, warm-up, cosine), followed
    on resume. Exact resume: each training batch seeds the RNG from the run's seed, the global
    batch number and the rank (``resume.step_seed``). Growth: ``init_from`` and ``ModelHost``.
    Bad steps (NaN, inf, a loss over ``loss_spike_factor`` × its running mean) are dropped, and
    ``max_bad_steps`` in a row stop the run (``bitlm.training.health``).
    """

    def __init__(
        self,
        model: ModelConfig | Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        include_parity_loss: bool = False,
        label_smoothing: float = 0.0,
        lambda_K: float = 0.0,
        lambda_C: float = 0.0,
        lambda_S: float | None = None,
        ponder_weight: float = 0.01,
        symbiosis_reference: str = "marginal",
        reference_model: str | None = None,
        telemetry: bool = True,
        noise_level: float = 1.0,
        diffusion_telemetry_windows: int = 4,
        diffusion_weighting: str = "elbo",
        compress_prob: float = 0.0,
        max_bad_steps: int = 10,
        loss_spike_factor: float | None = 4.0,
        qat: bool = False,
        init_from: str | None = None,
    ) -> None:
        config = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model)
        super().__init__(config, init_from, qat)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.hparams["model"] = config.to_dict()  # plain dicts: checkpoints load weights_only
        self.hparams["optimizer"] = optim.as_config(optimizer, optim.DEFAULT_OPTIMIZER)
        self.hparams["scheduler"] = optim.as_config(scheduler, optim.DEFAULT_SCHEDULER)
        self.val_context: int | None = None  # validate on the first N bits of each window
        windows = diffusion_telemetry_windows if telemetry else None
        self.objective = objective_for(
            config, include_parity_loss, windows, label_smoothing, diffusion_weighting
        )
        self.knobs = check_knobs(Knobs(noise_level, compress_prob), self.objective)
        lambda_S = resolve_lambda_S(lambda_S, self.objective.regularisable, telemetry)
        self.hparams["lambda_S"] = lambda_S  # what the run used, also when defaulted
        kcs, self.ponder = KCSLoss(lambda_K, lambda_C, lambda_S), PonderCost(ponder_weight)
        bits_predicted = self.objective.bit_predictions
        check_kcs_options(
            kcs, self.objective.regularisable, symbiosis_reference, reference_model, telemetry
        )
        self.telemetry = KCSTelemetry(kcs) if telemetry and bits_predicted else None
        check_health_options(max_bad_steps, loss_spike_factor)
        self.health = TrainingHealth(spike_factor=loss_spike_factor)
        self.step_losses: list[Tensor] = []  # of the micro-batches of the current step
        self.run_seed = 0  # the seed the run started from (on_fit_start)
        self.register_buffer("reference_marginal", torch.full((FRAME_BITS,), 0.5))
        self.reference_model = (
            resume.frozen(load_model(reference_model)) if symbiosis_reference == "model" else None
        )
        self.metrics = nn.ModuleDict(
            {f"{s}_{n}": m() for s in ("train", "val") for n, m in self.objective.metrics.items()}
        )

    def setup(self, stage: str) -> None:
        """Estimate the ``marginal`` symbiosis reference from the training data, and count the
        model FLOPs of its batches (``flops_per_batch``)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and hasattr(datamodule, "byte_counts"):
            self.reference_marginal.copy_(marginal_reference(datamodule.byte_counts()))
            self.count_flops((datamodule.hparams.batch_size, datamodule.hparams.seq_len))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["health"] = self.health.state_dict()
        self.save_architecture(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the architecture the checkpoint's model grew to (``ModelHost``), log the
        settings this run changes, and restore the health record (not its streak)."""
        self.restore_architecture(checkpoint)
        resume.log_changes(checkpoint.get("hyper_parameters", {}), self.hparams)
        if "state_dict" in checkpoint:  # a sharded checkpoint's weights load in the strategy
            checkpoint["state_dict"].setdefault("reference_marginal", self.reference_marginal)
        legacy = {"bad_steps": checkpoint.get("nonfinite_steps", [0])[0]}
        self.health.load_state_dict(checkpoint.get("health", legacy))

    def on_train_start(self) -> None:
        """A resumed run's restored optimiser and schedule take this run's settings."""
        for optimizer, config in zip(
            self.trainer.optimizers, self.trainer.lr_scheduler_configs, strict=True
        ):
            optim.follow_hyperparameters(optimizer, config.scheduler, self.hparams.optimizer)

    def on_fit_start(self) -> None:  # the seed seed_everything set, before step seeding
        self.run_seed = torch.initial_seed()

    def on_train_end(self) -> None:
        """Leave the step count where the launching process finds it (``ddp_spawn`` sends the
        workers' ``callback_metrics`` back, not their ``global_step``)."""
        self.trainer.callback_metrics[FINAL_STEP_KEY] = torch.tensor(float(self.global_step))

    def on_train_batch_start(self, batch: Tensor, batch_idx: int) -> None:
        accumulate = self.trainer.accumulate_grad_batches
        global_batch = self.global_step * accumulate + batch_idx % accumulate
        torch.manual_seed(resume.step_seed(self.run_seed, global_batch, self.global_rank))

    def training_step(self, bits: Tensor, batch_idx: int) -> Tensor:
        bits = self.in_context(bits)
        out = self.objective.training_step(self.model, bits, self.knobs)
        loss = self._regularised(out, "train")
        self.step_losses.append(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, bits: Tensor, batch_idx: int) -> None:
        bits = self.in_context(bits, self.val_context)
        out = self.objective.validation_step(self.model, bits, batch_idx)
        self._log_metrics(out, "val")
        self.log("val/loss", out.loss, sync_dist=True)
        if self.telemetry is not None:
            reference = self._reference(out.seen)
            self.log_dict(self.telemetry.validation_update(out, reference))

    def _regularised(self, out: Output, stage: str) -> Tensor:
        """The objective's loss plus the ponder cost and the K/C/S terms; logs its metrics and
        the telemetry of the step."""
        self._log_metrics(out, stage)
        loss = self.ponder(out.loss, out.aux)
        if self.telemetry is not None:
            term, telemetry = self.telemetry.training_term(out, self._reference(out.seen))
            loss = loss if term is None else loss + term
            self.log_dict(telemetry)
        for name in ("ponder_cost", "layers_run"):
            if name in out.aux:
                self.log(f"telemetry/{name}", out.aux[name].detach())
        return loss

    def _log_metrics(self, out: Output, stage: str) -> None:
        for name, update in out.metrics.items():
            metric = self.metrics[f"{stage}_{name}"]
            metric(*update)  # forward: Lightning logs the batch value on steps
            self.log(f"{stage}/{name}", metric, prog_bar=True)

    def _reference(self, bits: Tensor) -> Tensor:  # what S compares the model's bits with
        return symbiosis_reference(bits, self.reference_marginal, self.reference_model)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        guard_step(self, optimizer, self.health, self.step_losses, self.hparams.max_bad_steps)

    def on_validation_epoch_end(self) -> None:
        """Judge the validation (``TrainingHealth.judge_validation`` on its bpb) during fit."""
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.health.judge_validation(float(self.metrics["val_bpb"].compute()))

    def train(self, mode: bool = True) -> BitLMModule:
        super().train(mode)  # the reference model stays in eval mode (no dropout)
        if self.reference_model is not None:
            self.reference_model.eval()
        return self

    def configure_optimizers(self) -> dict[str, Any]:
        """``optimizer`` and ``scheduler`` (``bitlm.training.optim``), stepped every batch."""
        hp = self.hparams
        return optim.lightning_optimizers(self, hp.optimizer, hp.scheduler, self.growths)
