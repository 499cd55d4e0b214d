"""Preemption: a signal stops training at a step boundary with last.ckpt saved (every rank at the
same step), hands over to the handler installed before (submitit's requeue), and exits for a
requeue; ckpt_path=auto and a requeued SLURM job resume. The end-to-end run, signalled and
resumed bit for bit, is in test_resume.py."""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.multiprocessing import ProcessExitedException

from bitlm.cli.train import requeue_default, resume_path
from bitlm.core.errors import BitLMError
from bitlm.core.runtime import config_dir
from bitlm.training.callbacks import LastCheckpoint, Preemption
from bitlm.training.checkpoint_io import AtomicCheckpointIO
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import quiet_trainer

TINY = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=144)


class _Signal(L.Callback):
    """Sends this process ``signum`` after optimizer step ``step`` (on rank ``rank`` only), with
    training made unhealthy first when ``unhealthy`` (a bad step's verdict)."""

    def __init__(self, step: int, signum: int, rank: int = 0, unhealthy: bool = False) -> None:
        self.step, self.signum, self.rank, self.unhealthy = step, signum, rank, unhealthy

    def on_train_batch_end(self, trainer, pl_module, *_) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            if self.unhealthy:
                pl_module.health.streak = 1
            os.kill(os.getpid(), self.signum)


def _fit(tmp_path, *callbacks: L.Callback, **trainer_options) -> None:
    """Fit a tiny model for up to 20 steps with ``LastCheckpoint`` saving every 2 steps."""
    L.seed_everything(0)
    last = LastCheckpoint(tmp_path / "checkpoints", every_n_train_steps=2)
    trainer = quiet_trainer(
        max_steps=20,
        limit_val_batches=0,
        callbacks=[*callbacks, last],
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        **trainer_options,
    )
    data = BitDataModule(seq_len=144, batch_size=4, cache_dir=str(tmp_path))
    trainer.fit(BitLMModule(TINY, scheduler={"warmup_steps": 2}), data)


def _step(tmp_path) -> int:
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def _preempted_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("preempted:")]


def test_a_signal_saves_at_the_step_then_hands_over_to_the_earlier_handler(tmp_path, capfd):
    """As under submitit, whose SIGUSR2 handler requeues the job: it runs after the save; then
    the exit status asks for a requeue, and the earlier handler is back in place."""
    calls = []

    def earlier(signum, frame):
        calls.append((signum, _step(tmp_path)))

    signal.signal(signal.SIGUSR2, earlier)
    try:
        with pytest.raises(SIGTERMException) as stop:
            _fit(tmp_path, _Signal(5, signal.SIGUSR2), Preemption())
        assert signal.getsignal(signal.SIGUSR2) is earlier
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    assert stop.value.code == 75
    assert calls == [(signal.SIGUSR2, 5)]
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert _preempted_lines(capfd.readouterr().err) == [
        f"preempted: SIGUSR2 at step 5: saved {last}; to resume, run again with ckpt_path=auto "
        "and the same hydra.run.dir"
    ]
    assert not (tmp_path / "checkpoints" / LastCheckpoint.UNCONFIRMED).exists()


def test_an_unhealthy_stop_keeps_the_last_confirmed_checkpoint(tmp_path, capfd):
    with pytest.raises(SIGTERMException) as stop:
        _fit(tmp_path, _Signal(5, signal.SIGTERM, unhealthy=True), Preemption(exit_code=99))
    assert stop.value.code == 99
    assert _step(tmp_path) == 2  # saved at 2, confirmed at 3; step 4's save failed its verdict
    assert "training was unhealthy: kept" in _preempted_lines(capfd.readouterr().err)[0]


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, capfd):
    """Rank 1 alone gets SIGUSR1 after step 3: rank 0, which got nothing, saves with it at step
    3 and reports it. (A rank running on would leave the other waiting in its save's barrier:
    the short timeout makes that a failure, not a hang.)"""
    ddp = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60))
    with pytest.raises(ProcessExitedException) as stop:
        _fit(tmp_path, _Signal(3, signal.SIGUSR1, rank=1), Preemption(), strategy=ddp, devices=2)
    assert stop.value.exit_code == 75
    assert _step(tmp_path) == 3
    assert _preempted_lines(capfd.readouterr().err) == [
        f"preempted: SIGUSR1 at step 3: saved {tmp_path / 'checkpoints' / 'last.ckpt'}; to "
        "resume, run again with ckpt_path=auto and the same hydra.run.dir"
    ]


def test_preemption_settings_are_checked():
    with pytest.raises(BitLMError, match="unknown signal"):
        Preemption(signals=["SIGUSR3"])
    with pytest.raises(BitLMError, match="1 to 255"):
        Preemption(exit_code=0)


def test_auto_resumes_last_ckpt_when_there_is_one_and_a_requeued_job_means_auto(
    tmp_path, monkeypatch
):
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert resume_path("auto", tmp_path) is None  # nothing yet: a fresh start
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resume_path("auto", tmp_path) == str(last)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeue_default(None) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert requeue_default(None) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert requeue_default(None) == "auto"
    assert requeue_default("last") == "last"  # an explicit choice stands


def test_training_handles_the_scheduler_signals_by_default():
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        preemption = compose("train").callbacks.preemption
    assert list(preemption.signals) == ["SIGTERM", "SIGUSR1", "SIGUSR2"]
    assert preemption.exit_code == 75


def test_the_slurm_launcher_signals_early_and_requeues(refused, tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="hydra/launcher=slurm needs hydra-submitit-launcher: pip install 'bitlm[slurm]'",
    )
    shown = refused(
        "train", "--cfg", "hydra", "hydra/launcher=slurm", "trainer=multinode", cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    launcher = yaml.safe_load(shown.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["signal_delay_s"], launcher["max_num_timeout"]) == (120, 3)
