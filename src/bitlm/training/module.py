"""BitLMModule: trains a BitTransformerLM (or the byte-level baseline) under Lightning."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection

from bitlm.core.bits import FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.core.rle import compress_bits
from bitlm.io import load_model, prepare_qat, quantization_of
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.model.expand import ADJUSTABLE, GROWABLE, grow_to
from bitlm.model.flops import batch_flops
from bitlm.model.noise import corrupt, corruption_rate, frame_predictions, sample_noise_times
from bitlm.objectives.diffusion import denoising_loss, denoising_stats, elbo_bits
from bitlm.objectives.kcs import KCSLoss
from bitlm.objectives.losses import BitsPerByte, bit_cross_entropy
from bitlm.telemetry.metrics import (
    LZComplexity,
    Negentropy,
    Symbiosis,
    bit_probabilities,
    marginal_reference,
)
from bitlm.training.health import TrainingHealth
from bitlm.training.optim import follow_hyperparameters, optimizer_and_schedule
from bitlm.training.strategies import shard_model

FINAL_STEP_KEY = "trainer/final_step"
"""``trainer.callback_metrics`` key of the optimizer steps taken when training ended."""


class BitLMModule(L.LightningModule):
    """Loss, metrics, optimiser and logging around the model ``build_model(config)`` makes.

    Loss: mean cross-entropy over the data bits (parity targets excluded by default: they are a
    deterministic function of their frame, so learning them teaches nothing about the text),
    plus the K/C/S terms ``λ_K·|K − K_data| + λ_C·|C − C_data| + λ_S·(1 − S)``
    (``objectives/kcs.py``, all λ 0 by default) and ``ponder_weight`` × the ACT ponder cost
    when the model halts (``model.use_act``).

    Logged: ``train/loss``, ``train/bpb``, ``train/lr``, ``val/loss``, ``val/bpb`` (monitored),
    and with ``telemetry`` (bit models) every step ``telemetry/{K,C,S,K_data,C_data}`` (batch
    means; the safety gate reads C and S) and ``val/{K,C,S}`` (means over the validation set).
    S compares the predictions with ``symbiosis_reference``: ``marginal`` (P(bit = 1) per frame
    position of the training data, estimated at fit start and saved with the checkpoint) or
    ``model`` (the predictions of the frozen model at ``reference_model``, a .ckpt or an
    exported folder).

    Diffusion mode (``model.mode=diffusion``, ``bitlm/objectives/diffusion.py``): the loss is the mean
    cross-entropy of the masked bits (parity bits included: they are part of the joint the
    likelihood bound covers) of windows corrupted at noise time t ~ U(0, ``noise_level``), which
    the ``DiffusionCurriculum`` callback lowers over training. Logged: ``train/bit_acc`` and
    ``val/bit_acc`` (argmax accuracy on the masked data bits; validation at t ~ U(0, 1) with a
    fixed seed per batch) and ``val/bpb``, the any-order upper bound (``elbo_bits``) on the
    model's bits per byte. A diffusion model's telemetry reads ``frame_predictions`` (each frame
    predicted with itself masked: on clean input it would see the bits it predicts), on the
    first ``diffusion_telemetry_windows`` windows of each training batch (two extra forward
    passes without gradients) and on every validation window; K/C/S losses are refused.

    Compressed inputs (causal bit models): with probability ``compress_prob`` (which the
    ``CompressionRamp`` callback moves) a training batch is run-length coded and the model reads
    it through ``forward_compressed``; its bpb is logged as ``train/bpb_compressed``, raw batches'
    as ``train/bpb``.

    Exact resume: before every training batch the global RNG is seeded from the run's seed, the
    global batch number and the rank (``step_seed``), so dropout, noise and the compression draw
    of a step do not depend on what ran before it (the data order is fixed by the sampler).

    Growth (``model/expand.py``): ``init_from`` starts from a trained model (a .ckpt or an
    exported folder) grown function-preservingly to ``model`` (deeper, wider, longer context;
    ``experiment=extend_context``). During training the ``AdaptiveExpansion`` callback grows the
    model through ``install_model`` and ``record_growth``: each growth scales the LR by its
    ``lr_scale`` from then on and warms it up again over its ``warmup_steps``
    (``growth_lr_factor``). The grown architecture is the checkpoint's ``model`` hyper-parameter,
    so a resumed run rebuilds it before the weights load. Batches longer than the model's context
    (data windows sized for the context it may grow to) are read up to ``max_seq_len`` bits;
    ``val_context`` (bits) shortens the validation windows further (bpb at a shorter context).

    Bad steps (``bitlm.training.health.TrainingHealth``): when the gradients hold NaN or inf (a NaN
    loss included) or the loss spikes (over ``loss_spike_factor`` × its running mean; null: NaN
    and inf only) the gradients are dropped before the optimiser step, so the weights do not
    move (the step still counts), and the step is counted (``train/bad_steps``);
    ``max_bad_steps`` in a row stop training with an error. Checkpoints are written only while
    training is healthy (``LastCheckpoint`` waits for the next step's verdict), so the last one
    holds weights from before the trouble, and a resume starts with a fresh allowance.

    Resume honours the command line: the optimiser's lr, betas and weight decay and the
    schedule (its length from ``trainer.max_steps``) follow this run's settings, not the
    checkpoint's, with one log line per changed value; a model architecture other than the
    checkpoint's is an error (growing a trained model is ``finetune=true``).
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
        lambda_K: float = 0.0,
        lambda_C: float = 0.0,
        lambda_S: float = 0.0,
        ponder_weight: float = 0.01,
        symbiosis_reference: str = "marginal",
        reference_model: str | None = None,
        telemetry: bool = True,
        noise_level: float = 1.0,
        diffusion_telemetry_windows: int = 4,
        compress_prob: float = 0.0,
        max_bad_steps: int = 10,
        loss_spike_factor: float | None = 4.0,
        qat: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        config = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = config.to_dict()  # plain dict: checkpoints load with weights_only
        self.model = build_model(config) if init_from is None else grown_from(init_from, config)
        self.start_config = config  # before any growth: what a resume must be given again
        self.growths: list[dict[str, Any]] = []  # record_growth: step, lr_scale, warmup_steps
        self.val_context: int | None = None  # validate on the first N bits of each window
        self.kcs = KCSLoss(lambda_K, lambda_C, lambda_S)
        self.bit_model = config.unit == "bit"
        self.diffusion = config.mode == "diffusion"
        if not 0.0 < noise_level <= 1.0:
            raise BitLMError(f"module.noise_level must be in (0, 1], got {noise_level}")
        if diffusion_telemetry_windows < 1:
            raise BitLMError(
                f"module.diffusion_telemetry_windows must be >= 1, got "
                f"{diffusion_telemetry_windows}"
            )
        self.noise_level = noise_level  # the DiffusionCurriculum callback lowers it
        self.compress_prob = compress_prob  # the CompressionRamp callback moves it
        _check_compression(compress_prob, config)
        if max_bad_steps < 1:
            raise BitLMError(f"module.max_bad_steps must be >= 1, got {max_bad_steps}")
        if loss_spike_factor is not None and not loss_spike_factor > 1:
            raise BitLMError(
                f"module.loss_spike_factor must be > 1 or null, got {loss_spike_factor}"
            )
        self.health = TrainingHealth(spike_factor=loss_spike_factor)
        self.step_losses: list[Tensor] = []  # of the micro-batches of the current step
        self.run_seed = 0  # the seed the run started from (on_fit_start)
        self.configured = False  # configure_model runs for fit and again for validate
        self.batch_shape: tuple[int, int] | None = None  # (windows, bits) of a training batch
        self.flops: dict[bool, int] = {}  # model FLOPs of one batch, by training mode
        _check_telemetry_options(self.kcs, config, symbiosis_reference, reference_model, telemetry)
        self.telemetry = telemetry and self.bit_model
        self.register_buffer("reference_marginal", torch.full((FRAME_BITS,), 0.5))
        self.reference_model = (
            _frozen(load_model(reference_model)) if symbiosis_reference == "model" else None
        )
        self.train_bpb = BitsPerByte()
        self.train_compressed_bpb = BitsPerByte()
        self.val_bpb = BitsPerByte()
        self.train_bit_acc = MeanMetric()
        self.val_bit_acc = MeanMetric()
        self.val_telemetry = MetricCollection(
            {"K": Negentropy(), "C": LZComplexity(), "S": Symbiosis()}, prefix="val/"
        )

    def forward(self, bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.model(bits)

    def setup(self, stage: str) -> None:
        """Estimate the ``marginal`` symbiosis reference from the training data, and count the
        model FLOPs of its batches (``flops_per_batch``)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and hasattr(datamodule, "byte_counts"):
            self.reference_marginal.copy_(marginal_reference(datamodule.byte_counts()))
            self.count_flops((datamodule.hparams.batch_size, datamodule.hparams.seq_len))

    @property
    def flops_per_batch(self) -> int | None:
        """Model FLOPs of one batch (``bitlm.model.flops``): forward and backward in training,
        forward in validation. Lightning's ``ThroughputMonitor`` reads it every batch and logs
        FLOPs/s, and MFU where it knows the device's peak (CUDA GPUs)."""
        return self.flops.get(self.training)

    def count_flops(self, batch_shape: tuple[int, int] | None = None) -> None:
        """Count the model FLOPs of batches of ``batch_shape`` (windows, bits), or of the shape
        counted last (after a growth): once per architecture. The summary's FLOPs column runs
        the model on one zero batch of that shape (``example_input_array``)."""
        self.batch_shape = batch_shape or self.batch_shape
        if self.batch_shape is None:
            return
        config = self.model.config
        shape = (self.batch_shape[0], min(self.batch_shape[1], config.max_seq_len))  # _in_context
        self.flops = {mode: batch_flops(config, *shape, mode) for mode in (True, False)}
        self.example_input_array = torch.zeros(shape, dtype=torch.uint8)

    def configure_model(self) -> None:
        """With ``qat``, insert 4-bit fake quantizers into the linear layers
        (``bitlm.io.quantize.prepare_qat``; parameter names unchanged).
        Under ``ModelParallelStrategy`` (``trainer=fsdp``, ``trainer=fsdp_sim``) shard the
        model with FSDP2 over the data-parallel mesh (``bitlm.training.strategies.shard_model``);
        other strategies set no mesh and leave the model whole. Then, with ``model.compile``,
        compile it in place (``nn.Module.compile``: no ``_orig_mod.`` wrapper, so parameter
        names, checkpoints and exports are the same as without it). Once per module: Lightning
        calls it again for ``trainer.validate`` after ``trainer.fit``."""
        if self.configured:
            return
        self._prepare(self.model)
        self.configured = True

    def _prepare(self, model: torch.nn.Module) -> None:
        if self.hparams.qat:
            prepare_qat(model)
        if self.device_mesh is not None:
            shard_model(model, self.device_mesh["data_parallel"])
        if model.config.compile:
            model.compile()

    def install_model(self, model: torch.nn.Module) -> None:
        """Replace the model (a grown one) and its config in the hyper-parameters (what
        checkpoints rebuild), on this module's device, prepared as ``configure_model`` prepared
        the old one. The caller rebuilds the optimizer. Not under FSDP2: a sharded model would
        need its growth gathered and re-sharded, with its optimizer state."""
        if self.device_mesh is not None:
            raise BitLMError(
                "growing the model (adaptive expansion, or resuming a run that grew) is not "
                "supported under FSDP2 (trainer=fsdp): use trainer=ddp or one device"
            )
        self.model = model.to(self.device)
        self.hparams["model"] = model.config.to_dict()
        self.count_flops()
        if self.configured:
            self._prepare(self.model)

    def record_growth(self, lr_scale: float, warmup_steps: int) -> None:
        """From this step on, the LR schedule is scaled by ``lr_scale`` (on top of earlier
        growths') and warms up again over ``warmup_steps`` (``growth_lr_factor``)."""
        self.growths.append(
            {"step": self.global_step, "lr_scale": lr_scale, "warmup_steps": warmup_steps}
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["health"] = self.health.state_dict()
        checkpoint["growths"] = self.growths
        checkpoint["start_model"] = self.start_config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that this run's model is the one the checkpoint was trained from, and log the
        settings this run changes; rebuild the architecture the checkpoint's model grew to (its
        sizes; its weights load next); restore the growth record and the health record (not
        its streak: ``TrainingHealth``); checkpoints written before the symbiosis reference
        existed load with the default one."""
        hparams = checkpoint.get("hyper_parameters", {})
        saved = hparams.get("model")
        self.growths = checkpoint.get("growths", [])
        start = checkpoint.get("start_model", None if self.growths else saved)
        if start is not None:
            _check_same_architecture(ModelConfig.from_dict(start), self.start_config)
        _log_changes(hparams, self.hparams)
        if saved is not None:
            sizes = {name: saved[name] for name in GROWABLE if name in saved}
            grown = dataclasses.replace(self.model.config, **sizes)
            if grown != self.model.config:  # keeps this run's ADJUSTABLE settings (dropout, …)
                self.install_model(build_model(grown))
        if "state_dict" in checkpoint:  # a sharded checkpoint's weights load in the strategy
            checkpoint["state_dict"].setdefault("reference_marginal", self.reference_marginal)
        legacy = {"bad_steps": checkpoint.get("nonfinite_steps", [0])[0]}
        self.health.load_state_dict(checkpoint.get("health", legacy))

    def on_train_start(self) -> None:
        """A resumed run's restored optimiser and schedule take this run's lr, betas and
        weight decay (``follow_hyperparameters``); a fresh run's already have them."""
        for optimizer, config in zip(
            self.trainer.optimizers, self.trainer.lr_scheduler_configs, strict=True
        ):
            follow_hyperparameters(optimizer, config.scheduler, self.hparams)

    def on_fit_start(self) -> None:
        self.run_seed = torch.initial_seed()  # what seed_everything set, before step seeding

    def on_train_end(self) -> None:
        """Leave the step count where the launching process finds it: under ``ddp_spawn`` the
        workers' ``callback_metrics`` are sent back to it, their ``global_step`` is not."""
        self.trainer.callback_metrics[FINAL_STEP_KEY] = torch.tensor(float(self.global_step))

    def on_train_batch_start(self, batch: Tensor, batch_idx: int) -> None:
        accumulate = self.trainer.accumulate_grad_batches
        global_batch = self.global_step * accumulate + batch_idx % accumulate
        torch.manual_seed(step_seed(self.run_seed, global_batch, self.global_rank))

    def _in_context(self, bits: Tensor, limit: int | None = None) -> Tensor:
        """The first ``max_seq_len`` bits (at most ``limit``) of each window: the whole window,
        unless the data is sized for a context the model may still grow to."""
        return bits[:, : min(self.model.config.max_seq_len, limit or bits.size(1))]

    def training_step(self, bits: Tensor, batch_idx: int) -> Tensor:
        bits = self._in_context(bits)
        if self.diffusion:
            loss, logits, aux = self._denoise(bits, "train", self.noise_level)
        else:
            compress = self.compress_prob > 0 and bool(torch.rand(()) < self.compress_prob)
            loss, logits, aux = self._score(bits, "train", compress)
        if self.telemetry:
            seen, predictions = bits, logits
            if self.diffusion:
                seen = bits[: self.hparams.diffusion_telemetry_windows]
                predictions = self._telemetry_logits(seen)
            with torch.set_grad_enabled(self.kcs.active):
                kcs_loss, telemetry = self.kcs(predictions, seen, self._reference(seen))
            if self.kcs.active:
                loss = loss + kcs_loss
            self.log_dict({f"telemetry/{k}": v.detach() for k, v in telemetry.items()})
        for name in ("ponder_cost", "layers_run"):
            if name in aux:
                self.log(f"telemetry/{name}", aux[name].detach())
        self.step_losses.append(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, bits: Tensor, batch_idx: int) -> None:
        bits = self._in_context(bits, self.val_context)
        if self.diffusion:
            generator = torch.Generator(bits.device).manual_seed(batch_idx)
            loss, logits, _ = self._denoise(bits, "val", 1.0, generator)
            window_bits = elbo_bits(self.model, bits, generator)  # bound on −log2 p(window)
            n_bytes = bits.size(1) // FRAME_BITS
            self.val_bpb.update((window_bits / n_bytes)[:, None].expand(-1, n_bytes))
            self.log("val/bpb", self.val_bpb, prog_bar=True)
        else:
            loss, logits, _ = self._score(bits, "val")
        self.log("val/loss", loss, sync_dist=True)
        if self.telemetry:
            reference = self._reference(bits)
            if self.diffusion:
                logits = self._telemetry_logits(bits)
            self.val_telemetry["K"].update(logits)
            self.val_telemetry["C"].update(logits)
            self.val_telemetry["S"].update(logits, reference)
            self.log_dict(self.val_telemetry)

    def _score(
        self, bits: Tensor, stage: str, compressed: bool = False
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Causal mode: ``(loss, logits or None, model telemetry)``, updating and logging the
        stage's bpb (``train/bpb_compressed`` when the model read the batch run-length coded);
        the loss is the cross-entropy plus the weighted ponder cost when the model halts."""
        if not self.bit_model:  # the byte-level baseline: 256-way logits, no bit telemetry
            loss, byte_bits = self.model.score(bits, self.hparams.include_parity_loss)
            logits, aux = None, {}
        else:
            if compressed:
                logits, aux = self.model.forward_compressed(compress_bits(bits))
            else:
                logits, aux = self.model(bits)
            loss, byte_bits = bit_cross_entropy(logits, bits, self.hparams.include_parity_loss)
        bpb = self.train_compressed_bpb if compressed else getattr(self, f"{stage}_bpb")
        bpb(byte_bits)  # forward: Lightning logs the batch value on steps
        self.log(f"{stage}/bpb_compressed" if compressed else f"{stage}/bpb", bpb, prog_bar=True)
        return self._with_ponder(loss, aux), logits, aux

    def _denoise(
        self, bits: Tensor, stage: str, noise_level: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Diffusion mode: ``(loss, logits, model telemetry)`` of denoising bits corrupted at
        t ~ U(0, noise_level), updating and logging the stage's masked-bit accuracy."""
        t = sample_noise_times(bits.size(0), noise_level, generator, bits.device)
        rate = corruption_rate(self.model.config.noise_schedule, t)
        noisy, masked = corrupt(bits, rate, generator)
        logits, aux = self.model(noisy, causal=False)
        stats = denoising_stats(logits, bits, masked)
        accuracy = getattr(self, f"{stage}_bit_acc")
        if stats.count:
            accuracy(stats.correct / stats.count, stats.count)
        self.log(f"{stage}/bit_acc", accuracy, prog_bar=True)
        return self._with_ponder(denoising_loss(logits, bits, masked), aux), logits, aux

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Judge the step (``TrainingHealth.judge_step`` on the loss averaged over its
        micro-batches and the ranks, so every rank decides alike); drop the gradients of a bad
        one (the weights then stay as they are), count it, and stop the run after
        ``max_bad_steps`` of them in a row."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        loss = self.trainer.strategy.reduce(torch.stack(self.step_losses).mean(), reduce_op="mean")
        self.step_losses.clear()
        finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))  # a DTensor's too
        loss = float(loss)
        if not self.health.judge_step(loss, finite):
            return
        optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without gradients
        self.log("train/bad_steps", float(self.health.bad_steps))
        if self.health.streak >= self.hparams.max_bad_steps:
            raise BitLMError(
                f"{self.health.streak} training steps in a row (up to step {self.global_step}) "
                f"had a NaN, infinite or spiking loss (last {loss:.4g}; running mean "
                f"{self.health.ema or math.nan:.4g}); training stopped. Checkpoints are only "
                "written from weights a later step found healthy, so checkpoints/last.ckpt (if "
                "one was saved) holds the last good state: lower module.lr (or set "
                "trainer.gradient_clip_val, trainer.precision=32-true), then resume with "
                "ckpt_path=last"
            )

    def on_validation_epoch_end(self) -> None:
        """Judge the validation (``TrainingHealth.judge_validation`` on its bpb) during fit."""
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.health.judge_validation(float(self.val_bpb.compute()))

    def _with_ponder(self, loss: Tensor, aux: dict[str, Tensor]) -> Tensor:
        if "ponder_cost" in aux:
            return loss + self.hparams.ponder_weight * aux["ponder_cost"]
        return loss

    def _telemetry_logits(self, bits: Tensor) -> Tensor:
        """A diffusion model's predictions for telemetry: ``frame_predictions``, no gradients."""
        with torch.no_grad():
            return frame_predictions(self.model, bits)

    def _reference(self, bits: Tensor) -> Tensor:
        """The symbiosis reference for ``bits``: per-position marginals (9,) or the reference
        model's P(bit = 1) (B, L) (a diffusion reference model's ``frame_predictions``)."""
        if self.reference_model is None:
            return self.reference_marginal
        with torch.no_grad():
            if self.reference_model.config.mode == "diffusion":
                return bit_probabilities(frame_predictions(self.reference_model, bits))
            return bit_probabilities(self.reference_model(bits)[0])

    def train(self, mode: bool = True) -> BitLMModule:
        """The reference model stays in eval mode (no dropout) whatever the module's mode."""
        super().train(mode)
        if self.reference_model is not None:
            self.reference_model.eval()
        return self

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (weight decay on matrices only) with linear warmup then cosine decay per step."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "set trainer.max_steps or trainer.max_epochs: the LR schedule needs it"
            )
        optimizer, scheduler = optimizer_and_schedule(
            self,
            self.hparams,
            int(total),
            self.growths,
            self.global_step,
            str(self.trainer.precision),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _check_telemetry_options(
    kcs: KCSLoss, config: ModelConfig, reference: str, reference_model: str | None, on: bool
) -> None:
    if kcs.active and not on:
        raise BitLMError("module.lambda_K/C/S need module.telemetry=true: set them to 0")
    if kcs.active and config.mode == "diffusion":
        raise BitLMError(
            "module.lambda_K/C/S regularise next-bit predictions; a model.mode=diffusion model "
            "is trained on masked bits only: set them to 0"
        )
    if kcs.active and config.unit != "bit":
        raise BitLMError(
            "module.lambda_K/C/S regularise a bit model's predictions; the byte-level baseline "
            "(model.unit=byte) has none: set them to 0"
        )
    if reference not in ("marginal", "model"):
        raise BitLMError(
            f"module.symbiosis_reference must be 'marginal' or 'model', got {reference!r}"
        )
    if reference == "model" and not reference_model:
        raise BitLMError(
            "module.symbiosis_reference=model needs module.reference_model=PATH (a .ckpt or an "
            "exported model folder)"
        )


def _check_compression(compress_prob: float, config: ModelConfig) -> None:
    if not 0.0 <= compress_prob <= 1.0:
        raise BitLMError(f"module.compress_prob must be in [0, 1], got {compress_prob}")
    if compress_prob > 0 and (config.unit != "bit" or config.mode != "causal"):
        raise BitLMError(
            "compressed inputs (module.compress_prob) are read by causal bit models through "
            "forward_compressed: set module.compress_prob=0 for this model"
        )


def step_seed(run_seed: int, global_batch: int, rank: int) -> int:
    """The seed of the global RNG for ``global_batch`` on ``rank``: ``SeedSequence`` mixes the
    three, so neighbouring batches get unrelated streams and a resumed run the same ones."""
    sequence = np.random.SeedSequence([run_seed, global_batch, rank])
    return int(sequence.generate_state(1, np.uint64)[0])


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def grown_from(path: str, config: ModelConfig) -> torch.nn.Module:
    """The float model at ``path`` (a .ckpt or an exported folder) grown to ``config``."""
    if quantization_of(path):
        raise BitLMError(
            f"module.init_from={path} is a quantized export; start from the float model "
            "(<run dir>/model or a .ckpt)"
        )
    return grow_to(load_model(path), config).model


def _check_same_architecture(trained: ModelConfig, given: ModelConfig) -> None:
    """A resume must be given the model the checkpoint was trained from (settings in
    ``ADJUSTABLE``, such as dropout, may change); ``BitLMError`` naming both otherwise."""
    changed = [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.name not in ADJUSTABLE and getattr(trained, f.name) != getattr(given, f.name)
    ]
    if changed:
        was = ", ".join(f"{n}={getattr(trained, n)}" for n in changed)
        now = ", ".join(f"{n}={getattr(given, n)}" for n in changed)
        raise BitLMError(
            f"the checkpoint was trained with model {was}, this run's model has {now}: resume "
            "with the model it was trained with (the same model=… and model.* options), or "
            "start a new run from it with finetune=true (which can grow it)"
        )


def _log_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """One log line per module setting this run changes from the checkpoint's."""
    for name in sorted(set(saved) & set(current) - {"model", "init_from"}):
        if saved[name] != current[name] and not _same_sequence(saved[name], current[name]):
            rank_zero_info(
                f"resume: module.{name}={current[name]!r} (the checkpoint had {saved[name]!r})"
            )


def _same_sequence(a: Any, b: Any) -> bool:
    """``[0.9, 0.95]`` and ``(0.9, 0.95)`` are the same betas."""
    sequences = (list, tuple)
    return isinstance(a, sequences) and isinstance(b, sequences) and list(a) == list(b)
