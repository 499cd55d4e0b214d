"""Training progress on stderr and in the run's log: Lightning's bar where stderr is a terminal,
and every N optimizer steps one line (step, loss, bpb, bytes/s, ETA), which replaces the bar
where stderr is not a terminal (CI, nohup, SLURM: a bar's carriage returns make such logs
unreadable) and always goes to train.log."""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import timedelta

import lightning as L
from lightning.pytorch.callbacks import Timer, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from bitlm.core.bits import FRAME_BITS

log = logging.getLogger(__name__)

SHOWN = {"train/loss": "loss", "train/bpb": "bpb"}
"""Metrics of the line (``BitLMModule`` logs them with ``prog_bar``) and their names there."""


def progress(
    every_n_steps: int = 50, interactive: bool | None = None, enabled: bool = True
) -> L.Callback:
    """The ``callbacks.progress`` config: a ``Progress`` bar, or, where the trainer's bar is
    turned off (``+trainer.enable_progress_bar=false``, beside which Lightning refuses any
    progress bar callback), Lightning's base ``Callback``, which does nothing."""
    return Progress(every_n_steps, interactive) if enabled else L.Callback()


class Progress(TQDMProgressBar):
    """Lightning's tqdm bar where stderr is a terminal (``interactive=None`` decides by
    ``sys.stderr.isatty()``), none elsewhere; every ``every_n_steps`` optimizer steps, and at
    the end of training, a line ``step 150/2000, loss 0.5012, bpb 0.7231, 31.2 kB/s, ETA
    0:01:04``: logged (stderr and train.log) where there is no bar, written to the log files
    alone where there is. It reads the metrics Lightning has already turned into numbers for
    the bar (``trainer.progress_bar_metrics``), so it adds no device sync of its own."""

    def __init__(self, every_n_steps: int = 50, interactive: bool | None = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        if not self.interactive:
            self.disable()
        self._started = (0.0, 0)  # time and global step when this fit began
        self._total: float = math.inf
        self._shown_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = (time.perf_counter(), trainer.global_step)
        self._total = trainer.estimated_stepping_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step % self.every_n_steps == 0:
            self._show(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._show(trainer)

    def _show(self, trainer: L.Trainer) -> None:
        """The line, once per optimizer step (the N batches a step accumulates all end with
        its number), from the first process, for a step this fit trained. ``rank_zero_info``
        also reaches stderr from a spawned process (``trainer=ddp_sim``), whose logging Hydra
        did not configure."""
        step = trainer.global_step
        if not trainer.is_global_zero or step in (self._shown_step, self._started[1]):
            return
        self._shown_step = step
        if self.interactive:
            log_to_files(log, logging.INFO, self.line(trainer))
        else:
            rank_zero_info(self.line(trainer))

    def line(self, trainer: L.Trainer) -> str:
        """The line at the trainer's step: pace and bytes/s are averages since the fit began."""
        step = trainer.global_step
        finite = math.isfinite(self._total)
        parts = [f"step {step}/{int(self._total)}" if finite else f"step {step}"]
        metrics = trainer.progress_bar_metrics
        parts += [f"{name} {metrics[key]:.4f}" for key, name in SHOWN.items() if key in metrics]
        seconds = time.perf_counter() - self._started[0]
        steps = step - self._started[1]
        per_step = bytes_per_step(trainer)
        if per_step is not None:
            parts.append(f"{_si(per_step * steps / seconds)}B/s")
        left = _seconds_left(trainer, (self._total - step) * seconds / steps)
        if left is not None:
            parts.append(f"ETA {timedelta(seconds=round(left))}")
        return ", ".join(parts)


def bytes_per_step(
    trainer: L.Trainer, datamodule: L.LightningDataModule | None = None
) -> int | None:
    """Bytes of training text one optimizer step reads: ``accumulate_grad_batches`` batches of
    ``batch_size`` windows of ``seq_len / 9`` bytes on each of ``world_size`` ranks; None
    without a datamodule (``datamodule``, else the trainer's) that has those hyper-parameters.
    """
    hparams = getattr(datamodule or trainer.datamodule, "hparams", {})
    if "batch_size" not in hparams or "seq_len" not in hparams:
        return None
    windows = trainer.accumulate_grad_batches * trainer.world_size * hparams["batch_size"]
    return windows * (hparams["seq_len"] // FRAME_BITS)


def _seconds_left(trainer: L.Trainer, by_steps: float) -> float | None:
    """Until the steps left are done at the pace so far (``by_steps``; infinite without a step
    limit) or ``trainer.max_time`` (Lightning's ``Timer``) runs out, whichever comes first."""
    limits = [c.time_remaining() for c in trainer.callbacks if isinstance(c, Timer)]
    left = min([by_steps, *(limit for limit in limits if limit is not None)])
    return max(left, 0.0) if math.isfinite(left) else None


def _si(value: float) -> str:
    """``31234.5`` → ``'31.2 k'``: one decimal and an SI prefix."""
    prefixes = ("", "k", "M", "G", "T")
    power = min(int(math.log10(max(value, 1.0)) // 3), len(prefixes) - 1)
    return f"{value / 1000**power:.1f} {prefixes[power]}"


def log_to_files(
    logger: logging.Logger, level: int, message: str, error: BaseException | None = None
) -> list[str]:
    """Log ``message`` (with the traceback of ``error``, if given) to the root logger's file
    handlers alone (the run's train.log), for what stderr already shows: the bar, the final
    ``error:`` line. Returns the paths of the files written to."""
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    record = logger.makeRecord(logger.name, level, "", 0, message, (), exc_info)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        if level >= handler.level:
            handler.handle(record)
    return [handler.baseFilename for handler in files]
