"""Distributed training on CPU: DDP and FSDP2 in two processes train the reversible model like one
process with the same global batch; sharded checkpoints resume and load into one process; the
no process is left behind (``run_process_group``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from bitlm.io import load_model
from tests.conftest import ENGLISH, run_process_group

SCRIPT = Path(__file__).with_name("distributed_run.py")
BATCH = 4  # per process; the single-process reference reads 2 × BATCH
# float32 sums in a different order (all-reduce, reduce-scatter): equal to rounding, not bitwise
TOLERANCE = 1e-5


def _run(tmp_path: Path, strategy: str, devices: int, batch: int, trunk: str, *grow) -> dict:
    out = tmp_path / f"{strategy}-{trunk}.json"
    argv = [sys.executable, str(SCRIPT), strategy, str(devices), str(batch), trunk, str(out), *grow]
    returncode, _, stderr = run_process_group(argv, cwd=tmp_path, timeout=300)
    assert returncode == 0, stderr[-3000:]
    result = json.loads(out.read_text())
    result["model"] = load_model(out.with_suffix(".ckpt"))  # a folder of shards under fsdp2
    return result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference runs, one per trunk, computed once."""
    cache: dict[str, dict] = {}

    def get(trunk: str) -> dict:
        if trunk not in cache:
            tmp = tmp_path_factory.mktemp(f"single-{trunk}")
            cache[trunk] = _run(tmp, "single", 1, 2 * BATCH, trunk)
        return cache[trunk]

    return get


@pytest.mark.parametrize(
    "strategy, trunk", [("ddp_spawn", "flat"), ("fsdp2", "flat"), ("fsdp2", "hierarchical")]
)
def test_two_processes_train_like_one_process_with_the_same_global_batch(
    strategy, trunk, one_process, tmp_path
):
    reference = one_process(trunk)
    result = _run(tmp_path, strategy, 2, BATCH, trunk)
    assert len(result["losses"]) == len(reference["losses"]) == 6
    assert result["losses"] == pytest.approx(reference["losses"], abs=TOLERANCE)
    assert reference["losses"][-1] < reference["losses"][0] - 0.05  # it learned something
    for name, value in reference["model"].state_dict().items():
        torch.testing.assert_close(
            result["model"].state_dict()[name], value, atol=TOLERANCE, rtol=0, msg=name
        )
    # DDP replicates the model; FSDP2 keeps half of every parameter on each of the two ranks
    assert result["held"] == (1.0 if strategy == "ddp_spawn" else pytest.approx(0.5, abs=0.02))


def test_a_model_grown_under_ddp_trains_like_one_process(tmp_path):
    """AdaptiveExpansion under DDP: both ranks grow at the same steps, DDP is re-wrapped around
    the new parameters, and the run matches one process with the global batch."""
    reference = _run(tmp_path, "single", 1, 2 * BATCH, "flat", "grow")
    result = _run(tmp_path, "ddp", 2, BATCH, "flat", "grow")
    assert result["model"].config.n_layers == 4 and result["model"].config.d_model == 128
    assert result["losses"] == pytest.approx(reference["losses"], abs=TOLERANCE)
    for name, value in reference["model"].state_dict().items():
        torch.testing.assert_close(
            result["model"].state_dict()[name], value, atol=TOLERANCE, rtol=0, msg=name
        )


FSDP_TRAIN = (
    "model=tiny",
    "trainer.val_check_interval=3",
    "trainer.precision=32-true",
    "module.scheduler.warmup_steps=2",
    "module.scheduler.min_lr_ratio=1.0",  # constant LR after warm-up: max_steps is ignored
    "logger=none",
)


def test_fsdp_run_resumes_from_its_sharded_checkpoint_and_evaluates_in_one_process(
    run_cli, tmp_path
):
    sharded = ("trainer=fsdp_sim", "data.batch_size=4", f"hydra.run.dir={tmp_path / 'fsdp'}")
    first = run_cli("train", *FSDP_TRAIN, *sharded, "trainer.max_steps=6", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count('"run_dir"') == 1  # one summary, from rank 0
    last = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    assert (last / "meta.pt").is_file() and len(list(last.glob("*.distcp"))) == 2
    resumed = run_cli(
        "train", *FSDP_TRAIN, *sharded, "trainer.max_steps=9", "ckpt_path=last", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.json["steps"] == 9
    single = ("data.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}", "trainer.max_steps=9")
    whole = run_cli("train", *FSDP_TRAIN, *single, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert resumed.json["val_bpb"] == pytest.approx(whole.json["val_bpb"], abs=1e-4)
    exported, reference = (
        load_model(tmp_path / "fsdp" / "model"),
        load_model(whole.json["model_dir"]),
    )
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name], value, atol=TOLERANCE, rtol=0)
    # the sharded checkpoint is read whole by a single-process command
    text = tmp_path / "text.txt"
    text.write_text(ENGLISH * 4)
    scored, from_export = (
        run_cli("eval", f"ckpt_path={path}", f"files=[{text}]", cwd=tmp_path)
        for path in (last, tmp_path / "fsdp" / "model")
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert scored.json["bpb"] == pytest.approx(from_export.json["bpb"], abs=1e-6)


def test_ddp_spawn_run_reports_the_workers_steps_and_saves_the_final_state(run_cli, tmp_path):
    result = run_cli(
        "train",
        *FSDP_TRAIN,
        "trainer=ddp_sim",
        "data.batch_size=4",
        "trainer.max_steps=6",
        "callbacks.last_checkpoint.every_n_train_steps=4",  # the end is not a multiple of 4
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.json["steps"] == 6
    assert result.json["train_bytes"] == 6 * 2 * 4 * 32  # steps × ranks × batch × bytes/window
    checkpoint = torch.load(result.json["checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == 6
