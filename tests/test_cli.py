"""The command-line contract: JSON last line, files written, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch

from bitlm.core.bits import bits_to_bytes, bytes_to_bits
from tests.conftest import ENGLISH, TINY_TRAIN, assert_user_error


def test_train_writes_checkpoint_export_and_summary(trained_run):
    run_dir, result = trained_run
    summary = result.json
    assert summary["steps"] == 40
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert (run_dir / "model" / "config.json").is_file()
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert 0 < summary["val_bpb"] < 8.5
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["model"]["d_model"] == 64


def test_tensorboard_events_hold_loss_bpb_and_throughput(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = trained_run
    tags = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/bpb", "train/lr", "val/bpb"} <= tags
    assert "train/device/items_per_sec" in tags  # bits per second


def test_resume_from_last_checkpoint_continues_the_step_count(trained_run, run_cli, tmp_path):
    import shutil

    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    overrides = [o for o in TINY_TRAIN if not o.startswith("trainer.max_steps")]
    result = run_cli(
        "train",
        *overrides,
        "trainer.max_steps=50",
        "ckpt_path=last",
        f"hydra.run.dir={copy}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.json["steps"] == 50


@pytest.mark.parametrize("source", ["model", "checkpoints/last.ckpt"])
def test_eval_reports_bpb_per_file_and_gzip_reference(trained_run, run_cli, english_file, source):
    run_dir, _ = trained_run
    result = run_cli(
        "eval", f"ckpt_path={run_dir / source}", f"files=[{english_file}]", cwd=english_file.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.json
    keys = {"bpb", "bytes", "files", "references", "file_references", "size_bytes", "quantization"}
    assert set(out) == keys
    assert out["size_bytes"] > 100_000 and out["quantization"] is None
    assert out["bytes"] == english_file.stat().st_size
    assert out["files"] == {"held_out.txt": pytest.approx(out["bpb"])}
    assert 0 < out["bpb"] < 8.5
    assert 0 < out["references"]["gzip-9"] < 8
    assert out["file_references"] == {"held_out.txt": out["references"]}  # one file: the same


def test_eval_same_number_from_checkpoint_and_export(trained_run, run_cli, english_file):
    run_dir, _ = trained_run
    results = [
        run_cli("eval", f"ckpt_path={run_dir / s}", f"files=[{english_file}]", cwd=run_dir)
        for s in ("model", "checkpoints/last.ckpt")
    ]
    assert results[0].json["bpb"] == pytest.approx(results[1].json["bpb"], rel=1e-6)


def test_generate_prints_decodable_text(trained_run, run_cli, tmp_path):
    run_dir, _ = trained_run
    args = (f"ckpt_path={run_dir / 'model'}", "prompt=Once upon", "max_new_bytes=40", "seed=0")
    first = run_cli("generate", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.json
    assert out["bytes"] == 40 and out["parity_errors"] == 0
    assert run_cli("generate", *args, cwd=tmp_path).json == out  # seeded: reproducible
    encoded = out["text"].encode()
    assert bits_to_bytes(bytes_to_bits(encoded)) == encoded


def test_generate_with_the_safety_gate_reports_attempts_or_fails_in_one_line(
    trained_run, run_cli, tmp_path
):
    run_dir, _ = trained_run
    args = (f"ckpt_path={run_dir / 'model'}", "prompt=Once upon", "max_new_bytes=20", "seed=0")
    plain = run_cli("generate", *args, cwd=tmp_path).json
    safe = run_cli("generate", *args, "safety.enabled=true", "safety.s_floor=0", cwd=tmp_path)
    assert safe.returncode == 0, safe.stderr[-3000:]
    report = safe.json
    assert report["attempts"] == 1 and report["telemetry"]["safe"]
    assert report["text"] == plain["text"]  # the first attempt is the unguarded sample
    refused = run_cli(
        "generate",
        *args,
        "safety.enabled=true",
        "safety.s_floor=1",
        "safety.max_retries=1",
        "safety.backoff_s=0",
        cwd=tmp_path,
    )
    assert_user_error(refused, "no sample passed the safety gate in 2 attempts")


def test_unknown_override_is_one_line(run_cli, tmp_path):
    result = run_cli("train", "model.d_modle=3", cwd=tmp_path)
    assert_user_error(result, "d_modle")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--cfg", "job", "model=nope"], "Could not find 'model/nope'"),
        (["-m", "model=nope"], "Could not find 'model/nope'"),
        (["-cn", "eval", "ckpt_path=x", "files=[x]", "batch_size=abc"], "batch_size='abc'"),
        (["logger=wandb"], "Available options in 'logger': csv, none, tensorboard"),
        (["--cfg", "job", "-m", "model=tiny"], "only one of --run, --multirun and --cfg"),
    ],
)
def test_a_mistake_is_one_line_whatever_the_flags(refused, tmp_path, args, named):
    result = refused("train", *args, cwd=tmp_path)
    assert_user_error(result, named)
    assert "Config search path" not in result.stderr  # where Hydra looked is no part of it


def test_max_seq_len_not_multiple_of_9(refused, tmp_path):
    result = refused("train", "model=tiny", "model.max_seq_len=100", cwd=tmp_path)
    assert_user_error(result, "multiple of 9", "99 or 108")


def test_training_text_shorter_than_a_window(refused, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("far too short")
    result = refused("train", "model=tiny", "data=text", f"data.paths=[{short}]", cwd=tmp_path)
    assert_user_error(result, "14 bytes", "needed")  # 13 + the newline that ends the file


def test_training_text_missing_file(refused, tmp_path):
    result = refused("train", "model=tiny", "data=text", "data.paths=[nope.txt]", cwd=tmp_path)
    assert_user_error(result, "nope.txt")


def test_eval_missing_empty_and_absent_files(trained_run, refused, tmp_path):
    run_dir, _ = trained_run
    ckpt = f"ckpt_path={run_dir / 'model'}"
    assert_user_error(refused("eval", ckpt, "files=[missing.txt]", cwd=tmp_path), "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_user_error(refused("eval", ckpt, "files=[empty.txt]", cwd=tmp_path), "empty")
    assert_user_error(refused("eval", ckpt, cwd=tmp_path), "files")


def test_missing_and_corrupt_checkpoints(trained_run, refused, english_file, tmp_path):
    files = f"files=[{english_file}]"
    missing = refused("eval", f"ckpt_path={tmp_path / 'none.ckpt'}", files, cwd=tmp_path)
    assert_user_error(missing, "not found")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    assert_user_error(
        refused("eval", f"ckpt_path={corrupt}", files, cwd=tmp_path), "could not read"
    )
    run_dir, _ = trained_run
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    assert_user_error(refused("generate", f"ckpt_path={truncated}", cwd=tmp_path), "could not read")
    bad_dir = tmp_path / "export"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_text("{not json")
    (bad_dir / "model.safetensors").write_bytes(b"junk")
    assert_user_error(refused("generate", f"ckpt_path={bad_dir}", cwd=tmp_path), "could not read")


def test_resume_without_checkpoint(refused, tmp_path):
    result = refused(
        "train", "model=tiny", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_user_error(result, "not found", "hydra.run.dir")


def test_bad_sampling_options(trained_run, refused, tmp_path):
    run_dir, _ = trained_run
    ckpt = f"ckpt_path={run_dir / 'model'}"
    assert_user_error(refused("generate", ckpt, "top_p=0", cwd=tmp_path), "top_p")
    assert_user_error(refused("generate", ckpt, "max_new_bytes=-1", cwd=tmp_path), "max_new_bytes")


def test_export_loads_as_plain_module(trained_run):
    from bitlm.io import load_model

    run_dir, _ = trained_run
    model = load_model(run_dir / "model")
    logits, _ = model(torch.zeros(1, 18, dtype=torch.long))
    assert logits.shape == (1, 18, 2)


def test_own_text_run_leaves_a_final_loadable_and_resumable_checkpoint(run_cli, tmp_path):
    """data=text with a single unbracketed path; training stops between validations (step 12,
    last validation at 10): last.ckpt must still hold step 12, load with weights_only (no
    config objects pickled in it), evaluate, and resume."""
    text = tmp_path / "notes.txt"
    text.write_text(ENGLISH * 20)
    run_dir = tmp_path / "run"
    common = (
        "model=tiny",
        "data=text",
        f"data.paths={text}",
        "data.batch_size=4",
        "trainer.precision=32-true",
        "trainer.val_check_interval=5",
        f"hydra.run.dir={run_dir}",
    )
    first = run_cli("train", *common, "trainer.max_steps=12", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 12
    evaluated = run_cli(
        "eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"files={text}", cwd=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert evaluated.json["bytes"] == text.stat().st_size
    resumed = run_cli("train", *common, "trainer.max_steps=15", "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.json["steps"] == 15


def test_non_text_prompt_and_bad_model_values(trained_run, refused, tmp_path):
    run_dir, _ = trained_run
    result = refused("generate", f"ckpt_path={run_dir / 'model'}", "prompt=true", cwd=tmp_path)
    assert_user_error(result, "prompt", "quote")
    assert_user_error(refused("train", "model=tiny", "model.dropout=abc", cwd=tmp_path), "dropout")
    too_long = refused("train", "model=tiny", "data.seq_len=576", cwd=tmp_path)
    assert_user_error(too_long, "data.seq_len=576", "max_seq_len=288")


def test_generate_refuses_the_byte_baseline(refused, tmp_path):
    from bitlm.io import save_pretrained
    from bitlm.model import build_model
    from bitlm.model.config import ModelConfig

    config = ModelConfig(
        unit="byte", reversible=False, d_model=32, n_heads=2, n_layers=1, max_seq_len=72
    )
    save_pretrained(build_model(config), tmp_path / "byte_model")
    result = refused("generate", f"ckpt_path={tmp_path / 'byte_model'}", cwd=tmp_path)
    assert_user_error(result, "unit=byte", "bit models")


def test_hierarchical_trunk_trains_evaluates_and_generates(run_cli, english_file, tmp_path):
    """The documented commands on real text with ``model.trunk=hierarchical``."""
    run_dir = tmp_path / "run"
    train = run_cli(
        "train", *TINY_TRAIN, "model.trunk=hierarchical", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert train.json["val_bpb"] < 7.0  # 40 steps of the byte-rate trunk: well below uniform (8)
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["model"]["trunk"] == "hierarchical"
    model = f"ckpt_path={run_dir / 'model'}"
    scored = run_cli("eval", model, f"files=[{english_file}]", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert 0 < scored.json["bpb"] < 8.0
    sampled = run_cli("generate", model, "prompt=It was", "max_new_bytes=30", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert sampled.json["bytes"] == 30 and sampled.json["parity_errors"] == 0


def test_byte_baseline_refuses_the_hierarchical_trunk(refused, tmp_path):
    result = refused("train", "model=byte_baseline", "model.trunk=hierarchical", cwd=tmp_path)
    assert_user_error(result, "model.unit=byte", "model.trunk=flat")
