"""Checks that need a CUDA GPU (marked ``gpu``; skipped without one): the ``trainer=gpu``
preset (bf16, compiled, MFU logged; the fused-AdamW rule is tested in test_objective), FSDP2
over the GPUs present, KV-cached generation on the GPU, and the memory benchmark's peak-memory
figures."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from bitlm.generation import GenerationOptions, generate
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY_RUN = ("model=tiny", "trainer.max_steps=30", "trainer.val_check_interval=30")


def _logged(run_dir, column: str) -> list[float]:
    """The non-empty values of ``column`` in the run's CSV log (logger=csv)."""
    with (run_dir / "csv" / "metrics.csv").open() as rows:
        return [float(row[column]) for row in csv.DictReader(rows) if row.get(column)]


def test_gpu_preset_trains_bf16_compiled_and_logs_mfu(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "train", *TINY_RUN, "trainer=gpu", "logger=csv", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.json["steps"] == 30 and result.json["val_bpb"] < 8
    hparams = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "compile: true" in hparams and "precision: bf16-mixed" in hparams
    mfu = _logged(run_dir, "train/device/mfu")
    assert mfu and all(0 < value < 1 for value in mfu)


def test_fsdp_trains_on_the_gpus_present_and_its_checkpoint_evaluates(
    run_cli, tmp_path, english_file
):
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        *TINY_RUN,
        "trainer=fsdp",
        "model.compile=false",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir()  # sharded: one folder, a file per rank
    scored = run_cli("eval", f"ckpt_path={last}", f"files=[{english_file}]", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert math.isfinite(scored.json["bpb"])


@pytest.mark.parametrize("trunk", ["flat", "hierarchical"])
def test_kv_cached_generation_on_the_gpu_matches_uncached(trunk):
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=64, n_heads=2, n_layers=2, max_seq_len=144, trunk=trunk, reversible=True
    )
    model = build_model(config).cuda().eval()
    cached = generate(model, b"Hi!", 40, GenerationOptions(temperature=0))
    assert len(cached) == 40
    uncached = GenerationOptions(temperature=0, kv_cache=False)
    assert generate(model, b"Hi!", 40, uncached) == cached


def test_memory_benchmark_on_the_gpu_reversible_peak_flat_in_depth(run_cli, tmp_path):
    result = run_cli(
        "bench",
        "memory",
        "device=cuda",
        "depths=[2,8]",
        "stacks=[reversible,plain]",
        "batch_size=16",
        "repeats=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = result.json["results"]
    assert rows["reversible"]["8"]["saved_bytes"] == rows["reversible"]["2"]["saved_bytes"]
    assert rows["plain"]["8"]["peak_bytes"] > 2 * rows["plain"]["2"]["peak_bytes"]
    assert rows["reversible"]["8"]["peak_bytes"] < rows["plain"]["8"]["peak_bytes"]
