"""Sweeps: a multirun's failed jobs are reported and recorded while the others run, a sweep
whose every job failed exits 1, a mistake that would fail every job is refused up front, and a
3-trial in-memory Optuna sweep of distributed (ddp_spawn) trials runs on past a failed trial,
its objective the summary value (the config itself: tests/test_configs.py)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from omegaconf import OmegaConf

from bitlm.app.hydra import objective
from bitlm.app.overrides import check_overrides
from bitlm.core.errors import BitLMError
from tests.conftest import ENGLISH, assert_user_error

# n_heads=3 divides neither width: that trial fails when its model is built
TINY_SEARCH = """\
# @package _global_
defaults:
  - optuna

hydra:
  sweeper:
    params:
      model.d_model: choice(32, 64)
      model.n_layers: choice(1, 2)
      model.n_heads: choice(2, 3)
      module.scheduler.warmup_steps: choice(2, 5)
"""
QUICK = (
    "model=tiny",
    "data=text",
    "data.batch_size=4",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.precision=32-true",
    "logger=none",
    "callbacks.progress.every_n_steps=2",
)


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_objective_is_the_named_summary_value_and_a_missing_one_is_an_error():
    summary = {"val_bpb": 2.5, "steps": 10, "run_dir": "x"}
    assert objective(OmegaConf.create({}), summary) is None
    assert objective(OmegaConf.create({"optimized_metric": "val_bpb"}), summary) == 2.5
    with pytest.raises(BitLMError, match=re.escape("choose one of ['steps', 'val_bpb']")):
        objective(OmegaConf.create({"optimized_metric": "val/bpb"}), summary)


def test_a_failed_job_is_reported_and_recorded_and_the_others_run(run_cli, tmp_path):
    """Job 1 reads a missing file; jobs 0 and 2 train. Also the logs of a job: Lightning's lines
    and the progress line (stderr is no terminal here) in train.log, the error in job 1's."""
    (tmp_path / "notes.txt").write_text(ENGLISH * 20)
    sweep = tmp_path / "sweep"
    paths = "data.paths=[notes.txt],[missing.txt],[notes.txt]"
    result = run_cli("train", "-m", *QUICK, paths, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [run["run_dir"] for run in _json_lines(result.stdout)] == [
        str(sweep / "0"),
        str(sweep / "2"),
    ]
    failed = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(failed) == 1 and failed[0].startswith("error: job 1 (model=tiny data=text")
    assert "data.paths=[missing.txt]" in failed[0] and "missing.txt'" in failed[0]
    assert result.stderr.strip().splitlines()[-1].startswith("sweep: 3 jobs ran, 1 failed (job 1)")
    summary = json.loads((sweep / "summary.json").read_text())
    assert (summary["jobs"], summary["failed"]) == (3, 1)
    assert summary["failures"][0]["job"] == 1 and "missing.txt" in summary["failures"][0]["error"]
    progress = re.compile(r"step 4/4, loss \d\.\d{4}, bpb \d+\.\d{4}, [\d.]+ k?B/s, ETA 0:00:00")
    assert len(progress.findall(result.stderr)) == 2  # once per trained job, never twice
    log = (sweep / "0" / "train.log").read_text()
    assert "Seed set to 1234" in log and "`Trainer.fit` stopped" in log  # Lightning's lines
    assert "step 2/4, loss" in log and progress.search(log)
    assert failed[0] in (sweep / "1" / "train.log").read_text()


def test_a_sweep_whose_every_job_failed_exits_1(refused, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", *QUICK, "seed=1,2", "data.paths=[missing.txt]", f"hydra.sweep.dir={sweep}")
    result = refused("train", *args, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "sweep: 2 jobs ran, 2 failed (job 0, 1)" in result.stderr
    assert json.loads((sweep / "summary.json").read_text())["failed"] == 2


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model=tiny,nope", "Could not find 'model/nope'"),
        ("module.optimizer.lr=1e-3,abc", "module.optimizer.lr='abc' is not a number"),
        ("data=corpus,text", "missing required option(s) data.paths"),
        ("hydra.run.dir=a,b", "Sweeping over Hydra's configuration is not supported"),
    ],
)
def test_a_sweep_value_that_would_fail_its_jobs_is_refused_before_any_runs(
    refused, tmp_path, override, named
):
    assert_user_error(refused("train", "-m", override, cwd=tmp_path), named)
    assert not (tmp_path / "train").exists()  # no sweep folder: nothing ran


def test_sweeps_the_command_line_would_run_pass_the_check():
    """Each value of a choice or range is checked, an interval (Optuna draws its values) not;
    a comma is no mistake in a multirun."""
    check_overrides(
        "train", ["-m", "model=tiny,small", "seed=range(1,4)", "module.optimizer.lr=1e-3,2e-3"]
    )
    check_overrides("generate", ["-m", "ckpt_path=x", "prompt=To be, or not"])
    optuna = [
        "hparams_search=optuna",
        "model.n_layers=1,2",
        "module.optimizer.lr=interval(1e-4,1e-2)",
    ]
    check_overrides("train", optuna)  # hydra.mode: MULTIRUN without -m; no exit


@pytest.mark.slow
def test_three_trial_sweep_of_ddp_spawn_runs_goes_on_past_a_failed_trial(run_cli, tmp_path):
    search = tmp_path / "configs" / "hparams_search"
    search.mkdir(parents=True)
    (search / "tiny.yaml").write_text(TINY_SEARCH)
    sweep = tmp_path / "sweep"
    result = run_cli(
        "train",
        "-m",
        "hparams_search=tiny",
        f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=3",
        f"hydra.sweep.dir={sweep}",
        "model=tiny",
        "trainer=ddp_sim",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "trainer.precision=32-true",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _json_lines(result.stdout)
    assert len(trials) == 2 and all(t["steps"] == 10 for t in trials)
    records = [json.loads((sweep / "jobs" / f"{n}.json").read_text()) for n in range(3)]
    failed = [r for r in records if r["error"] is not None]
    assert len(failed) == 1 and "model.n_heads=3" in failed[0]["overrides"]
    assert "n_heads (3)" in failed[0]["error"]
    assert "Failed experiment" in result.stderr  # Optuna's word: that trial is told FAIL
    assert "sweep: 3 jobs ran, 1 failed" in result.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t["val_bpb"] for t in trials))
    assert {"module.optimizer.lr", "model.d_model", "model.n_layers"} <= set(best["best_params"])
    assert best["best_params"]["model.n_heads"] == 2
