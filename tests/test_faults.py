"""Fault injection: what a hostile but ordinary user does (wrong settings on resume, a run
that diverges, damaged weights, wrong-typed overrides, free text with commas, bytes that are
not UTF-8, a full disk, leftovers of killed saves) ends in a good state or in one ``error:``
line and exit 2, and nothing the user had is lost. The server's rows are in test_serve.py and
test_mcp.py."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import typing
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from bitlm.app.overrides import check_overrides
from bitlm.cli.generate import generate, prompt_bytes
from bitlm.core.errors import BitLMError
from bitlm.core.files import atomic_writer, remove_stale_temporaries
from bitlm.core.runtime import config_dir
from bitlm.io import load_model
from bitlm.model.config import ModelConfig
from bitlm.training.callbacks import BestCheckpoint, LastCheckpoint
from bitlm.training.checkpoint_io import AtomicCheckpointIO
from bitlm.training.datamodule import BitDataModule
from bitlm.training.health import TrainingHealth
from bitlm.training.module import BitLMModule

from .conftest import TINY_TRAIN, assert_user_error, quiet_trainer

TINY = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=144)


def _resumable_copy(trained_run, tmp_path: Path) -> Path:
    """A copy of the session's trained run (40 steps, last.ckpt at step 40) to resume."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run[0], copy)
    return copy


def _train(runner, run_dir: Path, *overrides: str):
    """``bitlm-train`` with the tiny recipe in ``run_dir``, by ``runner`` (``run_cli``, or
    ``refused`` for a run that must stop at an error)."""
    settings_ = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    return runner("train", *settings_, *overrides, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)


# --- 1. resume honours the command line ------------------------------------------------------


def test_resume_takes_the_new_learning_rate_and_schedule_and_says_so(
    trained_run, run_cli, tmp_path
):
    run_dir = _resumable_copy(trained_run, tmp_path)
    result = _train(
        run_cli, run_dir, "ckpt_path=last", "module.optimizer.lr=1e-4", "trainer.max_steps=50"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume: module.optimizer.lr=0.0001 (the checkpoint had 0.003)" in result.stderr
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 50
    group = saved["optimizer_states"][0]["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(1e-4)
    assert saved["lr_schedulers"][0]["base_lrs"] == [pytest.approx(1e-4)] * 2
    assert group["lr"] == pytest.approx(1e-4 * 0.1)  # the 50-step schedule's end: min_lr_ratio


def test_resume_with_another_architecture_names_both(trained_run, refused, tmp_path):
    run_dir = _resumable_copy(trained_run, tmp_path)
    result = _train(refused, run_dir, "ckpt_path=last", "model.n_layers=3", "trainer.max_steps=50")
    assert_user_error(result, "n_layers=2", "n_layers=3", "finetune=true")


def test_resume_of_a_finished_run_says_so(trained_run, refused, tmp_path):
    run_dir = _resumable_copy(trained_run, tmp_path)
    result = _train(refused, run_dir, "ckpt_path=last", "trainer.max_steps=40")
    assert_user_error(result, "at step 40", "trainer.max_steps=40")


def test_resume_from_a_truncated_checkpoint_is_one_line_naming_the_best_one(
    trained_run, refused, tmp_path
):
    run_dir = _resumable_copy(trained_run, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = _train(refused, run_dir, "ckpt_path=last", "trainer.max_steps=50")
    assert_user_error(result, "cannot resume", "truncated", "best-step")


# --- 2. a good checkpoint is a good model ----------------------------------------------------


def test_the_recovery_recipe_of_a_diverged_run_works(trained_run, run_cli, tmp_path):
    """Diverge (lr 1e6) after a healthy start; the run stops with the recipe; following it
    (resume with a sane lr) ends finite and within 5 % of a run that never diverged."""
    run_dir = _resumable_copy(trained_run, tmp_path)
    best_before = sorted((run_dir / "checkpoints").glob("best-*"))
    diverged = _train(
        run_cli, run_dir, "ckpt_path=last", "module.optimizer.lr=1e6", "trainer.max_steps=80"
    )
    assert_user_error(diverged, "in a row", "resume with ckpt_path=last")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 40  # nothing of the diverged stretch was kept
    assert all(v.abs().max() < 100 for v in last["state_dict"].values() if v.is_floating_point())
    assert sorted((run_dir / "checkpoints").glob("best-*")) == best_before
    recovered = _train(run_cli, run_dir, "ckpt_path=last", "trainer.max_steps=80")
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    reference = _train(run_cli, tmp_path / "reference", "trainer.max_steps=80")
    assert math.isfinite(recovered.json["val_bpb"]) and recovered.json["steps"] == 80
    assert recovered.json["val_bpb"] == pytest.approx(reference.json["val_bpb"], rel=0.05)


class _RuinAt(L.Callback):
    """Blows the weights up right after optimizer step ``step`` (a finite loss at that step,
    ruined ones after it: what a far too high learning rate does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.model.parameters():
                    p.mul_(300.0)


def test_a_save_at_the_step_that_ruined_the_weights_is_never_kept(tmp_path):
    L.seed_everything(0)
    module = BitLMModule(ModelConfig(**TINY), max_bad_steps=3, scheduler={"warmup_steps": 2})
    module.health.warmup_steps = 3
    data = BitDataModule(seq_len=144, batch_size=4, cache_dir=str(tmp_path))
    ckpt = tmp_path / "ck"
    callbacks = [
        _RuinAt(10),  # before the checkpoints: step 10's save holds the ruined weights
        LastCheckpoint(ckpt, every_n_train_steps=5),
        BestCheckpoint(ckpt, monitor="val/bpb", filename="best-step{step}", save_top_k=1),
    ]
    trainer = quiet_trainer(
        max_steps=40,
        val_check_interval=10,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(BitLMError, match="3 training steps in a row"):
        trainer.fit(module, data)
    saved = torch.load(ckpt / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5
    assert saved["health"]["bad_steps"] == 0
    assert not (ckpt / LastCheckpoint.UNCONFIRMED).exists()
    assert sorted(p.name for p in ckpt.glob("best-*")) == []  # step 10's validation was ruined


def test_health_judges_spikes_and_validations_and_a_resume_starts_a_fresh_streak():
    health = TrainingHealth(spike_factor=4.0, warmup_steps=3)
    assert not any(health.judge_step(loss, True) for loss in (0.7, 0.6, 0.5))
    assert health.judge_step(3.5, True)  # over 4 × the running mean (≈ 0.7)
    assert health.judge_step(0.5, False)  # non-finite gradients
    assert health.judge_step(math.nan, True)
    assert (health.streak, health.bad_steps, health.ok) == (3, 3, False)
    assert health.judge_validation(5.0) and not health.judge_validation(21.0)
    assert not health.judge_validation(math.inf) and not health.ok
    restored = TrainingHealth()
    restored.load_state_dict(health.state_dict())
    assert (restored.streak, restored.bad_steps, restored.best_bpb, restored.ok) == (
        0,
        3,
        5.0,
        True,
    )
    assert not TrainingHealth(spike_factor=None, warmup_steps=0).spikes(1e9)


# --- 4. loading checks the weights -----------------------------------------------------------


@pytest.fixture
def nan_export(trained_run, tmp_path) -> Path:
    export = tmp_path / "nan_model"
    shutil.copytree(trained_run[0] / "model", export)
    weights = load_file(export / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, export / "model.safetensors", metadata={"format": "bitlm/v1"})
    return export


def test_nan_weights_are_refused_at_load_naming_the_tensor(nan_export, refused, english_file):
    name = sorted(load_file(nan_export / "model.safetensors"))[0]
    with pytest.raises(BitLMError, match=f"weight {name} holds NaN"):
        load_model(nan_export)
    files = f"files=[{english_file}]"
    assert_user_error(
        refused("eval", f"ckpt_path={nan_export}", files, cwd=nan_export.parent), name
    )
    generated = refused("generate", f"ckpt_path={nan_export}", cwd=nan_export.parent)
    assert_user_error(generated, name, "NaN")


def test_no_command_prints_nan_in_its_json(monkeypatch, capsys, tmp_path):
    from bitlm.app.hydra import hydra_app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bitlm-eval", "ckpt_path=x", "files=[x]"])
    with pytest.raises(SystemExit) as stop:
        hydra_app("eval", lambda cfg: {"bpb": math.nan, "files": {"a": 1.0}})()
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "error: bpb came out as nan" in captured.err


# --- 5. one line and exit 2 for every bad input ---------------------------------------------


def _refused(config: str, *overrides: str, capsys) -> str:
    """``check_overrides`` refuses: exit 2 and one ``error:`` line, which is returned."""
    with pytest.raises(SystemExit) as stop:
        check_overrides(config, list(overrides))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("config", "override", "named"),
    [
        ("train", "module.optimizer.lr=abc", "module.optimizer.lr='abc' is not a number"),
        ("train", "module.optimizer.lr=nan", "module.optimizer.lr=nan is not a finite number"),
        ("train", "trainer.max_steps=abc", "trainer.max_steps='abc' is not an integer"),
        ("train", "module.telemetry=maybe", "is not true or false"),
        ("eval", "batch_size=abc", "batch_size='abc' is not an integer"),
        ("prepare", "val_fraction=abc", "val_fraction='abc' is not a number"),
        ("generate", "seed=abc", "seed='abc' is not an integer"),
        ("generate", "temperature=nan", "temperature=nan is not a finite number"),
        ("generate", "kv_cache=maybe", "kv_cache='maybe' is not true or false"),
        ("generate", "max_new_bytes=10**12", "max_new_bytes='10**12' is not an integer"),
        ("generate", "prompt=To be, or not", "\"prompt='To be, or not'\""),
        ("generate", "prompt=\udcff\udcfeab", "prompt_file=PATH"),
        ("serve", "port=http", "port='http' is not an integer"),
        ("distill", "seed=1.5", "seed=1.5 is not an integer"),
    ],
)
def test_wrong_typed_and_unquoted_overrides_are_one_line(config, override, named, capsys):
    extra = {"eval": ["ckpt_path=x", "files=[x]"], "generate": ["ckpt_path=x"]}
    extra |= {"prepare": ["output=x"], "distill": ["teacher=x", "target_params=1000"]}
    assert named in _refused(config, override, *extra.get(config, []), capsys=capsys)


@pytest.mark.parametrize(
    "override",
    [
        "trainer.devices=auto",
        "trainer.gradient_clip_val=null",
        "module.optimizer.lr=1",
        "seed=null",
    ],
)
def test_overrides_of_an_admitted_kind_pass(override):
    check_overrides("train", [override])  # no exit


def test_a_value_a_library_refuses_is_one_line_naming_its_key(refused, tmp_path):
    result = refused("train", "model=tiny", "trainer.val_check_interval=0.5", cwd=tmp_path)
    assert_user_error(result, "trainer:", "val_check_interval")


def _typed_leaves(config: str, required: list[str]) -> list[tuple[str, object]]:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config, overrides=required)

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float)) and _precisely_typed(node, key):
                yield f"{prefix}{key}", value

    from omegaconf import OmegaConf

    return list(leaves(OmegaConf.to_container(cfg, resolve=False)))


def _precisely_typed(node: dict, key: str) -> bool:
    """A command's own option, or a constructor parameter annotated with exactly one kind
    (Lightning's ``devices`` or ``save_last`` also admit text, so they are not in the set)."""
    if "_target_" not in node:
        return True
    hints = typing.get_type_hints(get_object(node["_target_"]).__init__)
    return hints.get(key) in [kind | None for kind in (bool, int, float)] + [bool, int, float]


REQUIRED = {"train": [], "eval": ["ckpt_path=x", "files=[x]"], "generate": ["ckpt_path=x"]}
TYPED = [
    (config, key, default)
    for config in REQUIRED
    for key, default in _typed_leaves(config, REQUIRED[config])
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target=st.sampled_from(TYPED),
    wrong=st.one_of(
        st.text(alphabet="abcxyz_", min_size=1, max_size=6),
        st.sampled_from(["nan", "inf", "-inf", "[1,2]", "{a: 1}", "maybe", "1.5e3x"]),
    ),
)
def test_random_wrong_typed_overrides_never_give_a_traceback(target, wrong, capsys):
    """Every option whose default is true/false, an integer or a number, given text, a list, a
    mapping or a non-finite number, is refused with one line naming it."""
    config, key, _ = target
    line = _refused(config, f"{key}={wrong}", *REQUIRED[config], capsys=capsys)
    assert key in line


# --- 6. prompts: free text, files, stdin; bounded output ------------------------------------


def test_prompt_file_and_stdin_take_any_bytes(tmp_path, monkeypatch):
    path = tmp_path / "prompt.bin"
    path.write_bytes(b"To be, or not\xff")
    assert prompt_bytes(None, str(path)) == b"To be, or not\xff"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from, stdin")))
    assert prompt_bytes("", "-") == b"from, stdin"
    with pytest.raises(BitLMError, match="not both"):
        prompt_bytes("x", str(path))
    with pytest.raises(BitLMError, match="cannot read prompt_file"):
        prompt_bytes(None, str(tmp_path / "missing"))


def test_max_new_bytes_is_bounded_with_a_clear_error():
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("generate", overrides=["ckpt_path=x", "max_new_bytes=2000000"])
    with pytest.raises(BitLMError, match="over limit_new_bytes=1048576"):
        generate(cfg)


# --- disk full -------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1.5 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_training_and_prepare_is_one_line(run_cli, tiny_disk, tmp_path):
    train = _train(run_cli, tiny_disk / "run", "trainer.max_steps=30")
    assert_user_error(train, "no space left on the device of", str(tiny_disk / "run"))
    assert not list((tiny_disk / "run").rglob("*.tmp"))
    source = tmp_path / "big.bin"
    source.write_bytes(torch.randint(0, 256, (3 * 2**20,), dtype=torch.uint8).numpy().tobytes())
    prepare = run_cli("prepare", f"inputs=[{source}]", f"output={tiny_disk / 'data'}", cwd=tmp_path)
    assert_user_error(prepare, "no space left", str(tiny_disk / "data"), "MiB")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["run"]  # no staging folder left


class _FullDevice:
    """A file handle whose writes fail as on a full device."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


def test_atomic_writer_reports_a_full_device_hidden_behind_torch_save(tmp_path):
    """``torch.save`` turns the ``OSError`` of a write into a RuntimeError of its own."""
    target = tmp_path / "x.ckpt"
    target.write_bytes(b"previous")
    with pytest.raises(BitLMError, match="no space left"), atomic_writer(target) as handle:
        handle.handle = _FullDevice(handle.handle)
        torch.save({"w": torch.zeros(1000)}, handle)
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"previous"


# --- 7. leftovers of killed saves ------------------------------------------------------------


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".last.k2j_9x0a.tmp").write_bytes(b"partial")
    (tmp_path / ".model.ab12cd34.tmp").mkdir()
    (tmp_path / ".model.old").mkdir()
    kept = [".last.ckpt.tmp", ".notes.tmp", "keep.txt", ".model.abc.tmp", "model"]
    for name in kept:
        (tmp_path / name).write_text("mine")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".last.k2j_9x0a.tmp",
        ".model.ab12cd34.tmp",
        ".model.old",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    (tmp_path / ".data.zzzzzzzz.tmp").mkdir()
    assert remove_stale_temporaries(tmp_path, "other") == []


def test_a_second_start_leaves_no_stale_temporary(trained_run, run_cli, tmp_path):
    run_dir = _resumable_copy(trained_run, tmp_path)
    checkpoints = run_dir / "checkpoints"
    leftovers = [checkpoints / ".last.x1y2z3w4.tmp", checkpoints / LastCheckpoint.UNCONFIRMED]
    leftovers += [run_dir / ".model.q1w2e3r4.tmp", run_dir / ".model.old"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    (run_dir / "notes.txt").write_text("mine")
    result = _train(run_cli, run_dir, "ckpt_path=last", "trainer.max_steps=45")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(path.exists() for path in leftovers)
    assert (run_dir / "notes.txt").read_text() == "mine"
    data = tmp_path / "data"
    (tmp_path / ".data.a1b2c3d4.tmp").mkdir()
    (tmp_path / ".data.old").mkdir()
    text = tmp_path / "text.txt"
    text.write_text("some text to prepare. " * 2000)
    prepared = run_cli("prepare", f"inputs=[{text}]", f"output={data}", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".data")) == []
