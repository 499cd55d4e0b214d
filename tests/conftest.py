"""Shared fixtures: run the real commands in a subprocess, and one tiny trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ENGLISH = (
    "It was a bright cold day in April, and the clocks were striking thirteen. The hallway "
    "smelt of boiled cabbage and old rag mats. At one end of it a coloured poster, too large "
    "for indoor display, had been tacked to the wall. "
)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        """The last stdout line, which the CLI contract says is one JSON object."""
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bitlm-cache")


@pytest.fixture(scope="session")
def run_cli(cache_dir):
    """``run_cli("train", "model=tiny", …, cwd=tmp)``: the command as a user runs it."""

    def run(command: str, *overrides: str, cwd: Path) -> CliResult:
        env = {**os.environ, "BITLM_CACHE_DIR": str(cache_dir), "BITLM_LOG_DIR": str(cwd)}
        proc = subprocess.run(
            [sys.executable, "-m", f"bitlm.cli.{command}", *overrides],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def quiet_trainer(**kwargs):
    """A CPU ``L.Trainer`` with no logger, checkpoints, progress bar or summary unless given."""
    import lightning as L

    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


TINY_TRAIN = (
    "model=tiny",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "trainer.precision=32-true",
    "data.batch_size=8",
    "module.warmup_steps=5",
)


@pytest.fixture(scope="session")
def trained_run(run_cli, tmp_path_factory) -> tuple[Path, CliResult]:
    """A tiny model trained for 40 steps on the embedded corpus, through bitlm-train."""
    root = tmp_path_factory.mktemp("trained")
    run_dir = root / "run"
    result = run_cli("train", *TINY_TRAIN, f"hydra.run.dir={run_dir}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


@pytest.fixture
def english_file(tmp_path) -> Path:
    path = tmp_path / "held_out.txt"
    path.write_text(ENGLISH * 3)
    return path
