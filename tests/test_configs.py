"""Every option of every config group composes and builds."""

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


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "data", "debug"])
def test_group_options_compose(group):
    for option in _options(group):
        overrides = [f"{group}={option}"]
        if option == "text":
            overrides.append("data.paths=[a.txt]")
        assert _compose("train", *overrides) is not None


@pytest.mark.parametrize("name", ["eval", "generate"])
def test_eval_and_generate_configs_compose(name):
    cfg = (
        _compose(name, "ckpt_path=x", "files=[a]")
        if name == "eval"
        else _compose(name, "ckpt_path=x")
    )
    assert cfg.ckpt_path == "x"
