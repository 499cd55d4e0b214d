"""Every option of every config group composes and builds."""

import importlib
import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bitlm.cli.train import training_length
from bitlm.core.runtime import config_dir
from bitlm.model.config import ModelConfig
from bitlm.training.strategies import FSDP2Strategy
from tests.conftest import assert_user_error


def _compose(name: str, *overrides: str, hydra: bool = False):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


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


@pytest.mark.parametrize(
    "choice", ["trainer=cpu", "trainer=gpu", "trainer=fsdp", "trainer=multinode"]
)
def test_a_chosen_trainer_never_inherits_the_quickstart_budget(choice):
    assert _compose("train").trainer.max_steps == 3500  # bitlm-train alone: the quickstart
    trainer = _compose("train", choice).trainer
    assert (trainer.max_steps, trainer.max_epochs) == (-1, None)  # one pass over the data
    assert training_length(trainer) == {"max_epochs": 1}
    assert training_length(_compose("train", choice, "trainer.max_steps=9").trainer) == {}


@pytest.mark.parametrize(
    "group, option", [(g, o) for g in ("trainer", "experiment") for o in _options(g)]
)
def test_no_preset_caps_the_wall_clock(group, option):
    overrides = ["ckpt_path=x"] if option == "extend_context" else []
    assert _compose("train", f"{group}={option}", *overrides).trainer.max_time is None


@pytest.mark.parametrize("option", ["gpu", "ddp", "fsdp", "multinode"])
def test_gpu_presets_train_bf16_compiled_with_tf32_matmuls(option):
    cfg = _compose("train", f"trainer={option}")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.compile is True and cfg.float32_matmul_precision == "high"
    assert _compose("train", f"trainer={option}", "model.compile=false").model.compile is False


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_sim", "fsdp_sim"])
def test_cpu_presets_keep_the_cpu_defaults(option):
    cfg = _compose("train", f"trainer={option}")
    assert cfg.trainer.precision == "auto" and cfg.model.compile is False
    assert cfg.float32_matmul_precision == "highest"


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callback_options_build(group, tmp_path):
    required = {"hub_upload": ["callbacks.hub_upload.repo_id=me/model"]}
    for option in _options(group):
        extra = required.get(option, [])
        cfg = _compose("train", f"{group}={option}", f"paths.output_dir={tmp_path}", *extra)
        built = [instantiate(node) for node in (cfg[group] or {}).values() if node]
        assert len(built) == len(cfg[group] or {})


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_sim", "fsdp_sim"])
def test_trainer_options_build_on_cpu(option, tmp_path):
    cfg = _compose("train", f"trainer={option}", f"paths.output_dir={tmp_path}")
    trainer = instantiate(cfg.trainer, precision="32-true", logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize(
    "option, accelerator, strategy",
    [
        ("cpu", "cpu", None),
        ("gpu", "gpu", None),
        ("ddp", "gpu", "ddp"),
        ("ddp_sim", "cpu", "ddp_spawn"),
        ("fsdp", "gpu", FSDP2Strategy),
        ("fsdp_sim", "cpu", FSDP2Strategy),
        ("multinode", "gpu", FSDP2Strategy),
    ],
)
def test_trainer_options_choose_accelerator_and_strategy(option, accelerator, strategy):
    cfg = _compose("train", f"trainer={option}")
    assert cfg.trainer.accelerator == accelerator
    chosen = cfg.trainer.get("strategy")
    if isinstance(strategy, type):
        assert isinstance(instantiate(chosen), strategy)
    else:
        assert chosen == strategy


def test_multinode_option_launches_one_slurm_task_per_gpu():
    cfg = _compose(
        "train", "trainer=multinode", "hydra/launcher=slurm", "trainer.num_nodes=4", hydra=True
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)


def test_optuna_search_minimises_val_bpb_in_memory():
    cfg = _compose("train", "hparams_search=optuna", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert (sweeper.direction, sweeper.storage) == ("minimize", None)
    assert {"module.optimizer.lr", "model.d_model", "model.n_layers"} <= set(sweeper.params)
    assert cfg.optimized_metric == "val_bpb"


def test_qat_experiment_trains_with_fake_quantization_and_exports_int8_and_int4():
    cfg = _compose("train", "experiment=qat")
    assert cfg.module.qat is True
    assert list(cfg.callbacks.model_export.quantize) == ["int8", "int4"]
    assert cfg.trainer.max_steps == _compose("train").trainer.max_steps  # quickstart's recipe


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


def test_diffusion_experiment_switches_to_frame_diffusion_and_the_curriculum_is_a_choice(tmp_path):
    cfg = _compose("train", "experiment=diffusion", f"paths.output_dir={tmp_path}")
    quickstart = _compose("train", f"paths.output_dir={tmp_path}")
    assert cfg.model.mode == "diffusion" and quickstart.model.mode == "causal"
    assert cfg.model.diffusion_unit == "frame" and cfg.module.diffusion_weighting == "elbo"
    assert set(quickstart.callbacks) == set(cfg.callbacks)  # the bound covers every noise level
    v1 = _compose(
        "train",
        "experiment=diffusion",
        "model.diffusion_unit=bit",
        "module.diffusion_weighting=mean",
        "callbacks=diffusion",
        f"paths.output_dir={tmp_path}",
    )
    assert set(quickstart.callbacks) | {"diffusion_curriculum"} == set(v1.callbacks)
    assert cfg.trainer.max_steps == quickstart.trainer.max_steps
    assert instantiate(cfg.model).mode == "diffusion"
    flat = _compose("train", "experiment=diffusion", "model.trunk=flat", "model=tiny")
    assert flat.model.trunk == "flat" and flat.model.mode == "diffusion"


@pytest.mark.parametrize(
    "group, target",
    [
        ("module", "bitlm.training.module.BitLMModule"),
        ("data", "bitlm.training.datamodule.BitDataModule"),
    ],
)
def test_default_configs_list_every_option_of_their_class(group, target):
    """So that every option can be overridden on the command line (`module.compress_prob=…`)."""
    module_name, class_name = target.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    options = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(_compose("train")[group]) - {"_target_"} == options


def test_an_unknown_matmul_precision_is_one_error_line(refused, tmp_path):
    result = refused("train", "model=tiny", "float32_matmul_precision=fast", cwd=tmp_path)
    assert_user_error(result, "float32_matmul_precision='fast'", "highest, high, medium")
