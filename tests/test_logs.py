"""The run's log and progress: train.log holds Lightning's lines and the final error, a
traceback included; the progress line's numbers; a line per optimizer step and, beside a bar,
in the log files alone; the trainer's own switch for the bar."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer

from bitlm.core.runtime import config_dir
from bitlm.model.config import ModelConfig
from bitlm.training.callbacks import progress as progress_module
from bitlm.training.callbacks.progress import Progress, bytes_per_step
from bitlm.training.datamodule import BitDataModule
from bitlm.training.module import BitLMModule
from tests.conftest import assert_user_error, quiet_trainer

CONFIG = ModelConfig(d_model=32, n_heads=2, n_layers=1, max_seq_len=72, trunk="flat")


def test_a_refused_run_leaves_lightning_s_lines_and_its_error_in_train_log(refused, tmp_path):
    run_dir = tmp_path / "run"
    args = ("model=tiny", "data=text", "data.paths=[nope.txt]", f"hydra.run.dir={run_dir}")
    result = refused("train", *args, cwd=tmp_path)
    assert_user_error(result, "nope.txt")
    error = result.stderr.strip().splitlines()[-1]
    assert result.stderr.count(error) == 1 and result.stderr.count("Seed set to 1234") == 1
    log = (run_dir / "train.log").read_text()
    assert "[lightning.fabric.utilities.seed][INFO] - Seed set to 1234" in log
    assert log.rstrip().endswith(error)


def test_an_unexpected_error_s_traceback_lands_in_the_log(refused, monkeypatch, tmp_path):
    """A single run: Hydra's report on stderr, exit 1, the whole traceback in train.log. A job
    of a multirun: one line naming it and where its traceback is; the sweep goes on."""

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(L.Trainer, "fit", crash)
    common = ("model=tiny", "logger=none", "trainer.precision=32-true")
    single = refused("train", *common, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert single.returncode == 1 and "RuntimeError: boom" in single.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Traceback" in log and "in crash" in log and "RuntimeError: boom" in log
    sweep = tmp_path / "sweep"
    swept = refused("train", "-m", *common, "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert swept.returncode == 1 and "Traceback" not in swept.stderr
    job = f"RuntimeError: boom (traceback in {sweep / '1' / 'train.log'})"
    assert f"error: job 1 (model=tiny logger=none trainer.precision=32-true seed=2): {job}" in (
        swept.stderr
    )
    assert "in crash" in (sweep / "1" / "train.log").read_text()


def test_the_line_gives_step_metrics_bytes_per_second_and_eta(monkeypatch):
    """150 of 2000 steps, 50 of them in 10 s, 2 batches of 32 windows of 32 bytes a step:
    10 240 B/s and 1850 steps at 0.2 s to go; a 60 s ``max_time`` ends it sooner."""
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    trainer = SimpleNamespace(
        global_step=100,
        estimated_stepping_batches=2000,
        progress_bar_metrics={"train/loss": 0.5, "train/bpb": 0.72, "val/bpb": 0.9},
        datamodule=SimpleNamespace(hparams={"batch_size": 32, "seq_len": 288}),
        accumulate_grad_batches=2,
        world_size=1,
        callbacks=[],
    )
    bar = Progress(interactive=False)
    bar.on_train_start(trainer, None)
    trainer.global_step, now[0] = 150, 110.0
    assert bytes_per_step(trainer) == 2048
    line = "step 150/2000, loss 0.5000, bpb 0.7200, 10.2 kB/s, ETA 0:06:10"
    assert bar.line(trainer) == line
    trainer.callbacks = [Timer(duration="00:00:01:00")]
    assert bar.line(trainer).endswith("ETA 0:01:00")


@pytest.mark.parametrize("interactive", [False, True])
def test_a_line_per_optimizer_step_and_beside_a_bar_only_in_the_log_files(
    interactive, caplog, monkeypatch, tmp_path
):
    """4 steps of 2 accumulated batches, a line every 2 steps: steps 2 and 4, once each."""
    log_file = logging.FileHandler(tmp_path / "train.log")
    monkeypatch.setattr(logging.getLogger(), "handlers", [*logging.getLogger().handlers, log_file])
    # as the CLI has it once Hydra has configured logging (bitlm.app.hydra._log_through_root)
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    trainer = quiet_trainer(
        max_steps=4,
        limit_val_batches=0,
        accumulate_grad_batches=2,
        enable_progress_bar=True,
        callbacks=[Progress(every_n_steps=2, interactive=interactive)],
        default_root_dir=tmp_path,
    )
    datamodule = BitDataModule(seq_len=72, batch_size=2, cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO):
        trainer.fit(
            BitLMModule(CONFIG, telemetry=False, scheduler={"warmup_steps": 1}),
            datamodule=datamodule,
        )
    log_file.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    written = [line for line in lines if line.startswith("step ")]
    assert [line.split(",")[0] for line in written] == ["step 2/4", "step 4/4"]
    assert all(re.search(r", [\d.]+ k?B/s, ETA 0:00:0\d$", line) for line in written)
    assert bytes_per_step(trainer) == 2 * 2 * 8  # accumulated batches, windows, bytes
    assert ("step 2/4" in caplog.text) is not interactive  # stderr: the bar, or the lines


def test_the_trainer_s_own_bar_switch_is_honoured(tmp_path):
    """Lightning refuses a progress bar callback beside ``enable_progress_bar=False``."""
    switches = (([], Progress), (["+trainer.enable_progress_bar=false"], type(None)))
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        for switch, bar in switches:
            cfg = compose("train", [*switch, f"paths.output_dir={tmp_path}"])
            callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
            trainer = instantiate(
                cfg.trainer, callbacks=callbacks, precision="32-true", logger=False
            )
            assert type(trainer.progress_bar_callback) is bar
