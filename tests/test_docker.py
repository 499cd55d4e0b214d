"""The Dockerfile's install steps, run as the image would run them, in a fresh virtual
environment (no Docker engine runs here): the package installs with the ``serve`` extra from
the files the image copies, and the image's command answers on its port."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .test_serve import _free_port, wait_for_status

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile_copies_only_what_exists_and_serves_on_its_exposed_port():
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    for kind, arguments in instructions:
        if kind == "COPY":
            *sources, _ = arguments.split()
            assert all((ROOT / source).exists() for source in sources), arguments
    expose = [args for kind, args in instructions if kind == "EXPOSE"]
    [command] = [args for kind, args in instructions if kind == "CMD"]
    assert expose == ["8000"]
    assert '"bitlm-serve"' in command and '"port=8000"' in command and '"host=0.0.0.0"' in command


@pytest.mark.slow
def test_image_install_steps_work_in_a_fresh_venv(tmp_path):
    """Copy what the image copies, run its pip steps with a fresh venv's pip (torch from this
    machine's configured package source instead of the CPU wheel index), start its CMD."""
    context = tmp_path / "image"
    context.mkdir()
    args = {}
    for kind, arguments in _instructions():
        if kind == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
        elif kind == "COPY":
            *sources, target = arguments.split()
            for source in sources:
                into_workdir = target in ("./", ".")
                destination = context / (Path(source).name if into_workdir else target.rstrip("/"))
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / source, destination)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        # this machine's pip configuration finds the CPU torch wheel; the image uses the index
        "TORCH_INDEX_URL": os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"),
    }
    env.pop("VIRTUAL_ENV", None)
    runs = [
        arguments for kind, arguments in _instructions() if kind == "RUN" and "pip" in arguments
    ]
    assert runs, "the Dockerfile installs nothing"
    for command in runs:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=context,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    [command] = [arguments for kind, arguments in _instructions() if kind == "CMD"]
    argv = [a.strip('"') for a in shlex.split(command.strip("[]").replace(",", " "))]
    argv = [
        str(venv / "bin" / argv[0]),
        *[a for a in argv[1:] if not a.startswith("port=")],
        f"port={port}",
        "host=127.0.0.1",
    ]
    server = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        status = wait_for_status(url, server)
        assert status["status"] == "ok" and status["model"] is None
        assert "bitlm dashboard" in httpx.get(f"{url}/").text
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
    assert server.returncode == 0
