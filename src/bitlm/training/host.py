"""ModelHost: the model a LightningModule trains — built or grown from a trained one, prepared
for the run (QAT, FSDP2, compile), its FLOPs counted, and replaced when it grows."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from bitlm.core.errors import BitLMError
from bitlm.io import prepare_qat
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.model.flops import batch_flops
from bitlm.model.noise import masked_logits
from bitlm.training import resume
from bitlm.training.strategies import shard_model


class ModelHost(L.LightningModule):
    """Holds ``model`` (``build_model(config)``, or the model at ``init_from`` grown to
    ``config``: ``experiment=extend_context``) and implements ``Growable``: a growth callback
    installs a grown model (``install_model``) and records the LR rule of the growth
    (``record_growth``). The grown architecture is the checkpoint's ``model`` hyper-parameter,
    so a resumed run rebuilds it before the weights load (``restore_architecture``)."""

    def __init__(self, config: ModelConfig, init_from: str | None, qat: bool) -> None:
        super().__init__()
        self.model = (
            build_model(config) if init_from is None else resume.grown_from(init_from, config)
        )
        self.start_config = config  # before any growth: what a resume must be given again
        self.growths: list[dict[str, Any]] = []  # record_growth: step, lr_scale, warmup_steps
        self.qat = qat
        self.configured = False  # configure_model runs for fit and again for validate
        self.batch_shape: tuple[int, int] | None = None  # (windows, bits) of a training batch
        self.flops: dict[bool, int] = {}  # model FLOPs of one batch, by training mode

    def forward(self, bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The model's logits for bits (a diffusion model's with nothing masked)."""
        if self.model.config.mode == "diffusion":
            return masked_logits(self.model, bits)
        return self.model(bits)

    def in_context(self, bits: Tensor, limit: int | None = None) -> Tensor:
        """The first ``max_seq_len`` bits (at most ``limit``) of each window: the whole window,
        unless the data is sized for a context the model may still grow to."""
        return bits[:, : min(self.model.config.max_seq_len, limit or bits.size(1))]

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
        shape = (self.batch_shape[0], min(self.batch_shape[1], config.max_seq_len))
        self.flops = {mode: batch_flops(config, *shape, mode) for mode in (True, False)}
        self.example_input_array = torch.zeros(shape, dtype=torch.uint8)

    def configure_model(self) -> None:
        """With ``qat``, insert 4-bit fake quantizers into the linear layers
        (``bitlm.io.prepare_qat``; parameter names unchanged). Under ``ModelParallelStrategy``
        (``trainer=fsdp``, ``trainer=fsdp_sim``) shard the model with FSDP2 over the
        data-parallel mesh (``bitlm.training.strategies.shard_model``); other strategies set no
        mesh. Then, with ``model.compile``, compile it in place (``nn.Module.compile``: no
        ``_orig_mod.`` wrapper, so parameter names, checkpoints and exports are the same as
        without it). Once per module: Lightning calls it again for ``trainer.validate``."""
        if not self.configured:
            self._prepare(self.model)
            self.configured = True

    def _prepare(self, model: nn.Module) -> None:
        if self.qat:
            prepare_qat(model)
        if self.device_mesh is not None:
            shard_model(model, self.device_mesh["data_parallel"])
        if model.config.compile:
            model.compile()

    def install_model(self, model: nn.Module) -> None:
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
        growths') and warms up again over ``warmup_steps`` (``optim.growth_lr_factor``)."""
        self.growths.append(
            {"step": self.global_step, "lr_scale": lr_scale, "warmup_steps": warmup_steps}
        )

    def save_architecture(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["growths"] = self.growths
        checkpoint["start_model"] = self.start_config.to_dict()

    def restore_architecture(self, checkpoint: dict[str, Any]) -> None:
        """Check that this run's model is the one the checkpoint was trained from, rebuild the
        architecture it grew to (its sizes; its weights load next) and restore the growths."""
        saved = checkpoint.get("hyper_parameters", {}).get("model")
        self.growths = checkpoint.get("growths", [])
        start = checkpoint.get("start_model", None if self.growths else saved)
        if start is not None:
            resume.check_same_architecture(ModelConfig.from_dict(start), self.start_config)
        grown = resume.grown_config(saved, self.model.config)
        if grown != self.model.config:
            self.install_model(build_model(grown))
