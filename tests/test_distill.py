"""Distillation (bitlm.training.distill): the loss, the student's size, the round loop's floors and
limits, the saved folder's metrics.json, and bitlm-distill."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bitlm.bench.measure import corpus_batches
from bitlm.core.errors import BitLMError
from bitlm.io import load_model
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.objectives.losses import bit_cross_entropy
from bitlm.training.distill import (
    collapse_submodel,
    distillation_loss,
    parameter_count,
    save_distilled_model,
    student_config,
)
from tests.conftest import assert_user_error

TEACHER = ModelConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=72, trunk="hierarchical")
QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.cat(corpus_batches(4, 16, 72, seed=3))  # (64, 72)


def _collapse(windows, floors, max_rounds, **options):
    torch.manual_seed(0)
    teacher = build_model(TEACHER)
    return collapse_submodel(
        teacher,
        windows,
        target_params=parameter_count(TEACHER) // 2,
        floors=floors,
        max_rounds=max_rounds,
        n_sequences=16,
        steps_per_round=3,
        batch_size=8,
        trainer_options=QUIET,
        **options,
    )


def test_distillation_loss_is_kl_plus_cross_entropy_over_the_data_bits():
    bits = torch.randint(0, 2, (2, 18))
    teacher, student = torch.randn(2, 18, 2), torch.randn(2, 18, 2)
    loss, kl, ce = distillation_loss(student, teacher, bits, alpha=0.25, temperature=2.0)
    assert ce == bit_cross_entropy(student, bits)[0]
    data = torch.arange(18) % 9 < 8
    p, q = teacher[:, data].div(2).softmax(-1), student[:, data].div(2).softmax(-1)
    expected_kl = (p * (p.log() - q.log())).sum(-1).mean() * 4
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(loss, 0.25 * kl + 0.75 * ce)
    parity_changed = teacher.clone()
    parity_changed[:, 8::9] = 5.0  # the parity bits' predictions do not count
    assert distillation_loss(student, parity_changed, bits, 1.0, 1.0)[1] == pytest.approx(
        distillation_loss(student, teacher, bits, 1.0, 1.0)[1]
    )
    assert distillation_loss(teacher, teacher, bits, 1.0, 1.0)[1] == pytest.approx(0, abs=1e-6)


def test_student_is_the_widest_half_depth_model_within_the_target():
    config = student_config(TEACHER, parameter_count(TEACHER) // 2)
    assert config.n_layers == 1 and config.n_heads % 2 == 0
    assert config.head_dim == TEACHER.head_dim
    assert parameter_count(config) <= parameter_count(TEACHER) // 2
    wider = ModelConfig(**{**config.to_dict(), "d_model": 64, "n_heads": 4, "d_ff": 256})
    assert config.n_heads == 4 or parameter_count(wider) > parameter_count(TEACHER) // 2
    with pytest.raises(BitLMError, match="below the smallest student"):
        student_config(TEACHER, 1000)


def test_met_floors_end_after_one_round(windows):
    result = _collapse(windows, floors={"C": 0.0}, max_rounds=3)
    assert len(result.rounds) == 1 and result.floors_met
    assert result.model.config.n_layers == 1


def test_missed_floors_grow_the_student_up_to_the_round_limit(windows):
    result = _collapse(windows, floors={"K": 1.5}, max_rounds=3, width_scale=1.5)  # K <= 1
    assert len(result.rounds) == 3 and not result.floors_met
    shapes = [(r["model"]["n_layers"], r["model"]["d_model"]) for r in result.rounds]
    assert shapes == [(1, 32), (2, 48), (3, 48)]  # deeper each time, 1.5× wider once
    assert result.metrics["parameters"] == parameter_count(result.model.config)


def test_saved_folder_holds_the_student_and_both_models_figures(windows, tmp_path):
    result = _collapse(windows, floors={"S": 0.0}, max_rounds=1)
    folder = save_distilled_model(result, tmp_path / "distilled")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"student", "teacher", "floors", "floors_met", "rounds"}
    for who in ("student", "teacher"):
        assert set(metrics[who]) == {"bpb", "K", "C", "S", "parameters", "size_bytes"}
    assert metrics["student"]["size_bytes"] == (folder / "model.safetensors").stat().st_size
    assert metrics["student"]["parameters"] < metrics["teacher"]["parameters"]
    assert metrics["floors"] == {"S": 0.0} and metrics["floors_met"] is True
    loaded = load_model(folder)
    assert load_file(folder / "model.safetensors").keys() == loaded.state_dict().keys()
    bits = windows[:2]
    torch.testing.assert_close(loaded(bits)[0], result.model.eval()(bits)[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"teacher": {"mode": "diffusion"}}, "causal bit model"),
        ({"floors": {"X": 1.0}}, "floors may set"),
        ({"width_scale": 1.0}, "width_scale"),
        ({"max_rounds": 0}, "max_rounds"),
    ],
)
def test_bad_options_are_refused(windows, change, message):
    teacher = build_model(ModelConfig(**{**TEACHER.to_dict(), **change.pop("teacher", {})}))
    options = {"floors": {"K": 0.0}, "max_rounds": 1, "width_scale": 1.5} | change
    with pytest.raises(BitLMError, match=message):
        collapse_submodel(teacher, windows, 10**6, **options)


def test_bitlm_distill_writes_the_student_and_reports_it(run_cli, refused, trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "student"
    result = run_cli(
        "distill",
        f"teacher={run_dir / 'model'}",
        "target_params=100000",
        "steps_per_round=3",
        "max_rounds=2",
        "pool=64",
        "n_sequences=16",
        "val_windows=8",
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model_dir"] == str(out) and 1 <= report["rounds"] <= 2
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert rounds[0]["parameters"] <= 100_000 < report["teacher"]["parameters"]
    assert load_model(out).config.to_dict() == rounds[-1]["model"]  # the last round's student
    missing = refused("distill", "teacher=nowhere", "target_params=1000", cwd=tmp_path)
    assert_user_error(missing, "nowhere")
