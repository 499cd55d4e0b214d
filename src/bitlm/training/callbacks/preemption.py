"""Stop at a scheduler's signal with ``last.ckpt`` saved, for the requeued job to resume from."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from bitlm.core.errors import BitLMError
from bitlm.training.callbacks.last_checkpoint import LastCheckpoint
from bitlm.training.callbacks.progress import log_to_files

log = logging.getLogger(__name__)


class Preemption(Checkpoint):
    """On any of ``signals`` (a scheduler's warning that the job is about to be preempted or hit
    its time limit), finish the optimizer step under way, save ``last.ckpt`` (the trainer's
    ``LastCheckpoint``: only while training is healthy, else the last confirmed one stays),
    skip the end of training (final validation, export: they would spend the grace period and
    export a half-trained model over nothing) and exit with ``exit_code``, after one stderr
    line saying what was saved and how to resume (``ckpt_path=auto``).

    The handler only records the signal, which may land mid-backward or mid-save; the stop
    waits for the step boundary. Ranks may get a signal at different steps, or only some of
    them get it, and a sharded save is a collective: so at every step the ranks sum their flags
    (one all-reduce of a few integers, next to the loss the module already reduces every step)
    and all stop at the same step. A ``Checkpoint`` subclass, so Lightning runs it after the
    other callbacks' step-end work, as it does ``LastCheckpoint``: the save holds the state a
    periodic save at that step would.

    Lightning registers its own handlers just before the training loop: for SIGTERM one that
    raises ``SIGTERMException`` (exit status 0, nothing saved) and, under SLURM, an auto-requeue
    on SIGUSR1 that writes ``hpc_ckpt_*.ckpt`` and requeues by itself. ``on_train_start`` takes
    those signals over, so nothing is handled twice; Lightning's teardown restores the handlers
    the process had. Those (captured at ``on_fit_start``) are called after the save: submitit's
    SIGUSR2 handler requeues the same job and exits. Where none does, the exit status is
    ``exit_code``: 75, ``EX_TEMPFAIL`` (sysexits.h: a temporary failure, try again later), which
    a wrapper script, a Kubernetes ``podFailurePolicy`` or a job queue can requeue on; 0 would
    read as finished, 1 as a crash, 2 as a usage error (bitlm's), 128+N as killed by signal N.
    """

    def __init__(
        self, signals: Sequence[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2"), exit_code: int = 75
    ) -> None:
        known = {s.name: s for s in signal.Signals}
        unknown = [name for name in signals if name not in known]
        if unknown:
            raise BitLMError(f"callbacks.preemption.signals: unknown signal(s) {unknown}")
        if not 1 <= exit_code <= 255:
            raise BitLMError(
                f"callbacks.preemption.exit_code={exit_code}: an exit status is 1 to 255 (0 "
                "would tell the scheduler that the run finished)"
            )
        self.signals = [known[name] for name in signals]
        self.exit_code = exit_code
        self.received: set[signal.Signals] = set()
        self.previous: dict[signal.Signals, object] = {}
        self.checked_step = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.previous = {s: signal.getsignal(s) for s in self.signals}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.checked_step = trainer.global_step
        for s in self.signals:
            signal.signal(s, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.add(signal.Signals(signum))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        """At each optimizer step (not between accumulated micro-batches), unless training ends
        at this step anyway (its end saves ``last.ckpt`` and exports), stop if a rank got one
        of the signals."""
        step = trainer.global_step
        if step == self.checked_step or step == trainer.max_steps or trainer.should_stop:
            return
        self.checked_step = step
        agreed = self._agreed(trainer)
        if agreed:
            self._stop(trainer, pl_module, agreed)

    def _agreed(self, trainer: L.Trainer) -> list[signal.Signals]:
        """The signals any rank has received (every rank asks at the same steps)."""
        counts = [int(s in self.received) for s in self.signals]
        if trainer.world_size > 1:
            local = torch.tensor(counts, device=trainer.strategy.root_device)
            counts = trainer.strategy.reduce(local, reduce_op="sum").tolist()
        return [s for s, count in zip(self.signals, counts, strict=True) if count]

    def _stop(
        self, trainer: L.Trainer, pl_module: L.LightningModule, agreed: list[signal.Signals]
    ) -> None:
        lasts = [c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)]
        last = lasts[0] if lasts else None
        saved = last is not None and last.save_now(trainer, pl_module)
        if trainer.is_global_zero:
            report = _report(agreed, trainer.global_step, last, saved)
            print(report, file=sys.stderr, flush=True)
            log_to_files(log, logging.WARNING, report)
        try:
            for s in agreed:
                handler = self.previous[s]
                if callable(handler):
                    handler(s, None)
        finally:  # no rank exits before rank 0's handler asked for the requeue
            trainer.strategy.barrier("preemption")
        raise SIGTERMException(self.exit_code)


def _report(
    agreed: list[signal.Signals], step: int, last: LastCheckpoint | None, saved: bool
) -> str:
    if saved:
        kept = f"saved {last.last_path}"
    elif last is not None and last.last_path.exists():
        kept = f"training was unhealthy: kept {last.last_path}, an earlier healthy state"
    else:
        kept = "nothing saved"
    names = "/".join(s.name for s in agreed)
    return (
        f"preempted: {names} at step {step}: {kept}; to resume, run again with ckpt_path=auto "
        "and the same hydra.run.dir"
    )
