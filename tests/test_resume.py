"""Exact resume (after a kill, after a preemption), atomic checkpoints and the non-finite step
guard."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bitlm.core.errors import BitLMError
from bitlm.data.samplers import EpochPermutation, ResumableSampler
from bitlm.model import ModelConfig
from bitlm.training.checkpoint_io import AtomicCheckpointIO
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import TINY_TRAIN, quiet_trainer

RESUME_TRAIN = (
    *TINY_TRAIN,
    "trainer.max_steps=150",
    "trainer.val_check_interval=50",
    "callbacks.last_checkpoint.every_n_train_steps=7",
    "logger=none",
    "model.dropout=0.1",  # randomness in every step: the step seeding must make it repeatable
)


# --- the data order ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 100, 4097, 65_537])
def test_epoch_permutation_is_a_bijection_keyed_by_seed_and_epoch(n):
    order = EpochPermutation(n, seed=3, epoch=0)(np.arange(n))
    assert sorted(order.tolist()) == list(range(n))
    if n >= 100:
        assert not np.array_equal(order, EpochPermutation(n, seed=3, epoch=1)(np.arange(n)))
        assert not np.array_equal(order, EpochPermutation(n, seed=4, epoch=0)(np.arange(n)))
        # a random permutation: correlation with the input order ~ N(0, 1/n)
        assert abs(np.corrcoef(np.arange(n), order)[0, 1]) < 4 / np.sqrt(n)


def test_permutation_of_a_corpus_larger_than_memory_is_computed_on_demand():
    n = 10**12  # a permutation array would be 8 TB
    values = EpochPermutation(n, seed=0, epoch=5)(np.arange(10**5))
    assert values.min() >= 0 and values.max() < n and len(set(values.tolist())) == 10**5


def test_sampler_resumes_at_the_batch_the_trainer_reached_and_shards_global_batches():
    batch = 4
    whole = list(ResumableSampler(103, batch, seed=1))  # 25 batches, 3 windows never read
    assert len(whole) == 100 and len(set(whole)) == 100
    resumed = list(ResumableSampler(103, batch, seed=1, start_batch=lambda: 10))
    assert resumed == whole[10 * batch :]
    next_epoch = list(ResumableSampler(103, batch, seed=1, start_batch=lambda: 25 + 2))
    assert next_epoch[:batch] == ResumableSampler(103, batch, seed=1).batch(27)
    ranks = [ResumableSampler(103, 2, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for g in (0, 7, 30):  # two ranks with batch 2 read what one process with batch 4 reads
        assert ranks[0].batch(g) + ranks[1].batch(g) == ResumableSampler(103, 4, seed=1).batch(g)


# --- exact resume after SIGKILL -------------------------------------------------------------


def _train(run_dir: Path, cache_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "BITLM_CACHE_DIR": str(cache_dir), "BITLM_LOG_DIR": str(run_dir.parent)}
    command = [sys.executable, "-m", "bitlm.cli.train", *RESUME_TRAIN, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        [*command, *extra],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> dict:
    """The JSON summary of a run that must succeed."""
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _wait_for_saves(proc: subprocess.Popen, checkpoint: Path, saves: int) -> None:
    """Return once ``checkpoint`` has been written ``saves`` times (seen by its mtime; a save
    missed between two polls only delays the kill), whatever the machine's speed."""
    seen, last = 0, None
    while seen < saves:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if stamp != last and stamp is not None:
            seen, last = seen + 1, stamp
        time.sleep(0.005)


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> dict:
    """The final state of a ``RESUME_TRAIN`` run that nothing stopped, run once for the tests
    that compare an interrupted and resumed run with it."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    _finish(_train(run_dir, cache_dir))
    return _state(run_dir)


def _assert_same_state(whole: dict, resumed: dict) -> None:
    """The same step, weights and Adam moments, bit for bit, and the same LR schedule and
    health record (loss EMA, step counts, best validation)."""
    assert resumed["global_step"] == whole["global_step"] == 150
    assert resumed["lr_schedulers"] == whole["lr_schedulers"]
    assert resumed["health"] == whole["health"]
    for name, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    adam_whole, adam_resumed = whole["optimizer_states"][0], resumed["optimizer_states"][0]
    for key, state in adam_whole["state"].items():
        for field, value in state.items():
            assert torch.equal(value, adam_resumed["state"][key][field]), (key, field)


def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights_bit_for_bit(
    tmp_path, cache_dir, uninterrupted
):
    killed = tmp_path / "killed"
    proc = _train(killed, cache_dir)
    _wait_for_saves(proc, killed / "checkpoints" / "last.ckpt", random.randint(1, 4))
    time.sleep(random.uniform(0.0, 0.05))  # then a random moment, mid-step or mid-save
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stopped_at = _state(killed)["global_step"]
    assert 7 <= stopped_at < 150, stopped_at  # killed mid-run, after at least one checkpoint
    _finish(_train(killed, cache_dir, "ckpt_path=last"))
    _assert_same_state(uninterrupted, _state(killed))


# --- preemption: a signal, a save at the step boundary, a requeue ---------------------------


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* is not empty")  # the rerun
def test_a_preempted_run_saves_exits_for_a_requeue_and_resumes_to_the_same_weights(
    tmp_path, cache_dir, uninterrupted, refused
):
    """SIGUSR1 mid-run: last.ckpt at the next step, no export, status 75 and one line saying
    how to resume; ``ckpt_path=auto`` started the run fresh (an empty run dir) and resumes it to
    the uninterrupted run's state; run once more, it finds the run finished and trains nothing."""
    run_dir, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = _train(run_dir, cache_dir, "ckpt_path=auto")
    _wait_for_saves(proc, last, random.randint(1, 4))
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 75, stderr[-3000:]
    assert f"ckpt_path=auto: no {last} yet, starting fresh" in stderr
    step = _state(run_dir)["global_step"]
    assert 7 < step < 150, step
    lines = [line for line in stderr.splitlines() if line.startswith("preempted:")]
    assert lines == [
        f"preempted: SIGUSR1 at step {step}: saved {last}; to resume, run again with "
        "ckpt_path=auto and the same hydra.run.dir"
    ]
    assert "Traceback" not in stderr and not (run_dir / "model").exists()  # nothing exported
    summary = _finish(_train(run_dir, cache_dir, "ckpt_path=auto"))
    assert summary["steps"] == 150 and summary["model_dir"] == str(run_dir / "model")
    _assert_same_state(uninterrupted, _state(run_dir))
    saved = last.stat().st_mtime_ns
    again = refused(
        "train", *RESUME_TRAIN, f"hydra.run.dir={run_dir}", "ckpt_path=auto", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{last} is at step 150: the run is finished" in again.stderr
    assert again.json["steps"] == 150 and last.stat().st_mtime_ns == saved


# --- atomic checkpoints ---------------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import sys, torch
    from bitlm.training.checkpoint_io import AtomicCheckpointIO
    io, path, version = AtomicCheckpointIO(), sys.argv[1], 0
    while True:
        version += 1
        weights = torch.full((4_000_000,), float(version))  # 16 MB: a kill often lands mid-write
        io.save_checkpoint({"state_dict": {"w": weights}, "version": version}, path)
        print(version, flush=True)
    """
)


def test_a_kill_during_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True
    )
    proc.stdout.readline()  # one checkpoint is complete
    time.sleep(random.uniform(0.05, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["version"] >= 1
    assert torch.equal(
        checkpoint["state_dict"]["w"], torch.full((4_000_000,), 1.0 * checkpoint["version"])
    )


def test_weights_holding_nan_are_never_written(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(BitLMError, match="hold NaN or inf"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, path)
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


# --- the non-finite step guard --------------------------------------------------------------

TINY = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=144)


class _NaNLoss(BitLMModule):
    """A module whose loss is NaN at the optimiser steps in ``bad_steps``."""

    def __init__(self, bad_steps: set[int], **kwargs) -> None:
        super().__init__(ModelConfig(**TINY), scheduler={"warmup_steps": 2}, **kwargs)
        self.bad_steps = bad_steps

    def training_step(self, bits, batch_idx):
        loss = super().training_step(bits, batch_idx)
        return loss * float("nan") if self.global_step in self.bad_steps else loss


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


class _Snapshots(L.Callback):
    def __init__(self) -> None:
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step[trainer.global_step] = _weights(pl_module)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    L.seed_everything(0)
    module = _NaNLoss({3, 4})
    snapshots = _Snapshots()
    data = BitDataModule(seq_len=144, batch_size=4, cache_dir=str(tmp_path))
    quiet_trainer(max_steps=8, limit_val_batches=0, callbacks=[snapshots]).fit(module, data)
    assert module.health.bad_steps == 2 and module.health.streak == 0
    assert module.global_step == 8
    for name, value in snapshots.after_step[5].items():  # steps 4 and 5 (global 3, 4) skipped
        assert torch.equal(value, snapshots.after_step[3][name]), name
    assert not torch.equal(
        snapshots.after_step[6]["head.weight"], snapshots.after_step[5]["head.weight"]
    )
    assert all(v.isfinite().all() for v in _weights(module).values())


def test_too_many_nonfinite_steps_in_a_row_stop_with_the_last_checkpoint_intact(tmp_path):
    L.seed_everything(0)
    module = _NaNLoss(set(range(5, 100)), max_bad_steps=3)
    checkpoints = ModelCheckpoint(
        tmp_path / "ck", every_n_train_steps=2, save_top_k=0, save_last=True
    )
    data = BitDataModule(seq_len=144, batch_size=4, cache_dir=str(tmp_path))
    trainer = quiet_trainer(
        max_steps=50,
        limit_val_batches=0,
        callbacks=[checkpoints],
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(BitLMError, match="3 training steps in a row"):
        trainer.fit(module, data)
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert saved["global_step"] in (6, 7)  # the last save before the stop at step 8
    assert all(v.isfinite().all() for v in saved["state_dict"].values())
    assert saved["health"]["bad_steps"] >= 1
