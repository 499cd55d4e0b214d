"""TensorBoard views of telemetry: attention maps, activation histograms, halting, samples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.tensorboard.summary import hparams

from bitlm.core.bits import bits_to_text
from bitlm.generation import GenerationOptions, sample
from bitlm.model.transformer import capture_internals, evaluating
from bitlm.telemetry.metrics import activation_stats, attention_entropy, lz76_complexity, negentropy

MONITORED = "val/bpb"


class TelemetryMonitor(L.Callback):
    """Every ``every_n_steps`` training steps, on the first ``probe_size`` sequences of the
    batch (eval mode, no gradients, one extra forward with attention weights kept):

    * scalars ``telemetry/C_lz76_data`` (exact LZ76 of the whole batch's data bits),
      ``telemetry/attention_entropy/layer_i`` (nats, mean over heads and queries) and
      ``telemetry/activation_rms/layer_i`` (the residual stream each layer's MLP reads);
    * images ``attention/layer_i``: the first sequence's attention weights, heads side by side;
    * histograms ``activations/layer_i`` and, with ``model.use_act``, ``halt_probs``.

    After each validation it samples ``sample_bytes`` bytes and logs their ``telemetry/K_sample``
    and ``telemetry/C_lz76_sample`` and the text (``sample``). At fit start it writes the
    hyper-parameters to TensorBoard's HPARAMS tab with ``val/bpb`` as the metric. Images, texts
    and histograms go to TensorBoard loggers, scalars to every logger; rank 0 only.
    """

    def __init__(self, every_n_steps: int = 200, probe_size: int = 4, sample_bytes: int = 64):
        if every_n_steps < 1 or probe_size < 1 or sample_bytes < 0:
            raise ValueError("every_n_steps and probe_size must be >= 1, sample_bytes >= 0")
        self.every_n_steps = every_n_steps
        self.probe_size = probe_size
        self.sample_bytes = sample_bytes

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        params = dict(_flatten({"module": pl_module.hparams}))
        if trainer.datamodule is not None:
            params.update(_flatten({"data": trainer.datamodule.hparams}))
        for writer in _writers(trainer):
            # the metric's value is not recorded here: TensorBoard matches the scalar tag
            for summary in hparams(params, {MONITORED: 0.0}):
                writer.file_writer.add_summary(summary)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or pl_module.model.config.unit != "bit":
            return
        model = pl_module.model
        # every rank runs the probe (a sharded model's forward is a collective); rank 0 logs
        with evaluating(model), torch.no_grad(), capture_internals(model) as internals:
            _, aux = pl_module(batch[: self.probe_size])
        if not trainer.is_global_zero:
            return
        scalars = {"telemetry/C_lz76_data": lz76_complexity(batch).mean().item()}
        writers = _writers(trainer)
        for layer, (maps, states) in enumerate(
            zip(internals.attention, internals.activations, strict=True)
        ):
            if not maps:  # with ACT every position halted before this layer: it did not run
                continue
            scalars[f"telemetry/attention_entropy/layer_{layer}"] = (
                attention_entropy(maps[0]).mean().item()
            )
            scalars[f"telemetry/activation_rms/layer_{layer}"] = activation_stats(states[0])["rms"]
            for writer in writers:
                writer.add_image(f"attention/layer_{layer}", attention_image(maps[0][0]), step)
                writer.add_histogram(f"activations/layer_{layer}", states[0].float(), step)
        if "halt_probs" in aux:
            for writer in writers:
                writer.add_histogram("halt_probs", aux["halt_probs"].float(), step)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.sample_bytes:
            return
        if pl_module.model.config.unit != "bit":
            return
        # every rank samples (same seed, same weights; a sharded model's forward is a
        # collective); rank 0 logs
        options = GenerationOptions(seed=trainer.global_step)
        bits = sample(pl_module.model, b"", self.sample_bytes, options).bits
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        scalars = {
            "telemetry/K_sample": negentropy(bits[None]).item(),
            "telemetry/C_lz76_sample": lz76_complexity(bits[None]).item(),
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step)
        for writer in _writers(trainer):
            writer.add_text("sample", bits_to_text(bits), step)


def attention_image(weights: Tensor) -> Tensor:
    """One image (1, T, H·(K+1) − 1) of attention weights (H, T, K): heads side by side, one
    blank column apart, each scaled to its own maximum so weak heads stay visible."""
    heads = weights.float() / weights.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    gap = heads.new_zeros(heads.size(1), 1)
    columns = [part for head in heads for part in (head, gap)][:-1]
    return torch.cat(columns, dim=1)[None]


def _writers(trainer: L.Trainer) -> list:
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def _flatten(values: Mapping[str, Any], prefix: str = ""):
    """``(dotted key, value)`` pairs of nested mappings; values TensorBoard cannot show as
    hyper-parameters (lists, None) become strings."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (bool, int, float, str)):
            yield f"{prefix}{key}", value
        else:
            yield f"{prefix}{key}", str(value)
