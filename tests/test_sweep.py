"""Hyper-parameter search: a 2-trial in-memory Optuna sweep of distributed (ddp_spawn) trials
runs, and its objective is the summary value (the config itself: tests/test_configs.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from omegaconf import OmegaConf

from bitlm.cli.app import objective

TINY_SEARCH = """\
# @package _global_
defaults:
  - optuna

hydra:
  sweeper:
    params:
      model.d_model: choice(32, 64)
      model.n_layers: choice(1, 2)
      module.warmup_steps: choice(2, 5)
"""


def test_objective_is_the_named_summary_value_and_a_missing_one_is_an_error(capsys):
    summary = {"val_bpb": 2.5, "steps": 10, "run_dir": "x"}
    assert objective(OmegaConf.create({}), summary) is None
    assert objective(OmegaConf.create({"optimized_metric": "val_bpb"}), summary) == 2.5
    with pytest.raises(SystemExit) as exit_info:
        objective(OmegaConf.create({"optimized_metric": "val/bpb"}), summary)
    assert exit_info.value.code == 2
    assert "choose one of ['steps', 'val_bpb']" in capsys.readouterr().err


@pytest.mark.slow
def test_two_trial_sweep_of_ddp_spawn_runs_records_the_best_trial(run_cli, tmp_path):
    search = tmp_path / "configs" / "hparams_search"
    search.mkdir(parents=True)
    (search / "tiny.yaml").write_text(TINY_SEARCH)
    result = run_cli(
        "train",
        "-m",
        "hparams_search=tiny",
        f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "model=tiny",
        "trainer=ddp_sim",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "trainer.precision=32-true",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(trials) == 2 and all(t["steps"] == 10 for t in trials)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t["val_bpb"] for t in trials))
    assert {"module.lr", "model.d_model", "model.n_layers"} <= set(best["best_params"])
