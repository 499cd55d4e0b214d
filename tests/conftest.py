"""Shared fixtures: run the real commands in a subprocess, and one tiny trained model."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
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
    """``run_cli("train", "model=tiny", …, cwd=tmp)``: the command as a user runs it. The
    command and every process it starts (distributed ranks) are gone when this returns."""

    def run(command: str, *overrides: str, cwd: Path) -> CliResult:
        env = {**os.environ, "BITLM_CACHE_DIR": str(cache_dir), "BITLM_LOG_DIR": str(cwd)}
        argv = [sys.executable, "-m", f"bitlm.cli.{command}", *overrides]
        returncode, stdout, stderr = run_process_group(argv, cwd=cwd, env=env)
        return CliResult(returncode, stdout, stderr)

    return run


@pytest.fixture(scope="session")
def refused(cache_dir):
    """``refused("eval", "ckpt_path=…", cwd=tmp)``: run the command's ``main`` in this process
    and return its ``CliResult``, for inputs the command must refuse. The exit status, stdout
    and the ``error:`` line come from the same code as in a subprocess (``hydra_app``'s
    ``fail``), without a new interpreter importing torch each time; an exception other than
    that exit (a traceback) fails the test. Logging and warning settings are restored."""

    def run(command: str, *overrides: str, cwd: Path) -> CliResult:
        main = importlib.import_module(f"bitlm.cli.{command}").main
        env = {"BITLM_CACHE_DIR": str(cache_dir), "BITLM_LOG_DIR": str(cwd)}
        out, err = io.StringIO(), io.StringIO()
        with (
            _process_state(cwd, env, [command, *overrides]),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main()
                code = 0
            except SystemExit as stop:
                code = stop.code
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@contextlib.contextmanager
def _process_state(cwd: Path, env: dict[str, str], argv: list[str]):
    """Run with ``cwd``, ``env`` and ``sys.argv`` set, and the root logger as it was after."""
    root = logging.getLogger()
    saved = (os.getcwd(), dict(os.environ), sys.argv, root.handlers[:], root.level)
    os.chdir(cwd)
    os.environ.update(env)
    sys.argv = argv
    try:
        yield
    finally:
        os.chdir(saved[0])
        os.environ.clear()
        os.environ.update(saved[1])
        sys.argv, root.handlers[:] = saved[2], saved[3]
        root.setLevel(saved[4])


def run_process_group(
    argv: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
) -> tuple[int, str, str]:
    """Run ``argv`` in a process group of its own; kill the whole group if it outlives
    ``timeout``; fail the test if any process of the group is still alive after it ends."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert_group_ended(proc.pid)
    return proc.returncode, stdout, stderr


def assert_group_ended(pgid: int, grace: float = 10.0) -> None:
    """No process of group ``pgid`` is left (ranks exiting just after rank 0 get ``grace``
    seconds); any that is gets killed, and the test fails."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail(f"processes of group {pgid} were still running after the command ended")


def assert_user_error(result, *fragments: str) -> None:
    """A command failed as the CLI contract says: status 2, one `error:` line naming
    ``fragments``, no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last, last
    assert result.stdout.strip() == ""


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
    "module.scheduler.warmup_steps=5",
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
