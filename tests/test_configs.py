"""Every option of every config group composes and builds."""

import importlib
import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bitlm.cli.app import config_dir
from bitlm.model.config import ModelConfig


def _compose(name: str, *overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


@pytest.mark.parametrize("option", _options("model"))
def test_model_options_build(option):
    config = instantiate(_compose("train", f"model={option}").model)
    assert isinstance(config, ModelConfig)


def test_cli_group_choice_beats_the_experiment():
    cfg = _compose("train", "model=tiny")
    assert cfg.model.d_model == 64
    assert cfg.trainer.max_steps == _compose("train").trainer.max_steps


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callback_options_build(group, tmp_path):
    for option in _options(group):
        cfg = _compose("train", f"{group}={option}", f"paths.output_dir={tmp_path}")
        built = [instantiate(node) for node in (cfg[group] or {}).values() if node]
        assert len(built) == len(cfg[group] or {})


@pytest.mark.parametrize("option", ["default", "cpu"])
def test_trainer_options_build_on_cpu(option, tmp_path):
    cfg = _compose("train", f"trainer={option}", f"paths.output_dir={tmp_path}")
    trainer = instantiate(cfg.trainer, precision="32-true", logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_text_data_and_debug_options_compose():
    cfg = _compose("train", "data=text", "data.paths=[a.txt]", "debug=fdr")
    assert cfg.data.paths == ["a.txt"] and cfg.trainer.fast_dev_run is True
    assert cfg.callbacks.model_checkpoint is None


@pytest.mark.parametrize("name", ["eval", "generate"])
def test_eval_and_generate_configs_compose(name):
    cfg = (
        _compose(name, "ckpt_path=x", "files=[a]")
        if name == "eval"
        else _compose(name, "ckpt_path=x")
    )
    assert cfg.ckpt_path == "x"


def test_telemetry_experiment_turns_the_regularisers_on_over_quickstart():
    cfg = _compose("train", "experiment=telemetry")
    quickstart = _compose("train", "experiment=quickstart")
    assert [cfg.module[f"lambda_{t}"] for t in "KCS"] == [0.1, 0.1, 0.1]
    assert cfg.trainer.max_steps == quickstart.trainer.max_steps
    assert _compose("train").module.lambda_K == 0.0


def test_safety_callbacks_extend_the_defaults(tmp_path):
    cfg = _compose("train", "callbacks=safety", f"paths.output_dir={tmp_path}")
    assert set(_compose("train").callbacks) | {"safety_gate"} == set(cfg.callbacks)
    assert cfg.callbacks.safety_gate.action == "warn"


def test_diffusion_experiment_switches_mode_and_adds_the_curriculum(tmp_path):
    cfg = _compose("train", "experiment=diffusion", f"paths.output_dir={tmp_path}")
    quickstart = _compose("train", f"paths.output_dir={tmp_path}")
    assert cfg.model.mode == "diffusion" and quickstart.model.mode == "causal"
    assert set(quickstart.callbacks) | {"diffusion_curriculum"} == set(cfg.callbacks)
    assert cfg.trainer.max_steps == quickstart.trainer.max_steps
    assert instantiate(cfg.model).mode == "diffusion"
    flat = _compose("train", "experiment=diffusion", "model.trunk=flat", "model=tiny")
    assert flat.model.trunk == "flat" and flat.model.mode == "diffusion"


@pytest.mark.parametrize(
    "group, target",
    [("module", "bitlm.lit.module.BitLMModule"), ("data", "bitlm.lit.datamodule.BitDataModule")],
)
def test_default_configs_list_every_option_of_their_class(group, target):
    """So that every option can be overridden on the command line (`module.compress_prob=…`)."""
    module_name, class_name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    options = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(_compose("train")[group]) - {"_target_"} == options
