"""What every bitlm command shares: config location, override checking, errors, JSON output.

Contract (scripts rely on it): progress and logs go to stderr; the last line on stdout is one
JSON object; a user mistake prints ``error: <one line>`` to stderr and exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import HydraException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bitlm.errors import BitLMError

Task = Callable[[DictConfig], dict[str, Any]]

# Upstream notices that say nothing to a bitlm user (library internals, not their settings).
HARMLESS_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # torch 2.13 deprecation inside Lightning
    r".*you need to define a `flops_per_batch`.*",  # ThroughputMonitor: we log bits/s, not MFU
    # Lightning cannot see that the window order resumes from global_step (ResumableSampler)
    r".*your dataloader is not resumable.*",
)


def config_dir() -> Path:
    """The Hydra config tree: bundled in the wheel as ``bitlm/configs``, or the repository's
    top-level ``configs/`` for a source (editable) install."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "configs"
    return bundled if bundled.is_dir() else package.parents[1] / "configs"


def hydra_app(config_name: str, task: Task, json_output: bool = True) -> Callable[[], None]:
    """Turn ``task(cfg) -> dict`` into a console-script ``main`` honouring the contract.
    ``json_output=False``: stdout is the task's own (``bitlm-mcp`` speaks MCP on it), and the
    task's result is not printed."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def run(cfg: DictConfig) -> float | None:
        stdout = contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext()
        try:
            with stdout:  # keep stdout for the JSON line
                result = task(cfg)
        except Exception as err:
            user_error = _user_error(err)
            if user_error is None:
                raise
            fail(_one_line(user_error))
        if json_output and rank_zero_only.rank == 0:  # other ranks end silently
            print(json.dumps(result, ensure_ascii=False), flush=True)
        return objective(cfg, result)

    def main() -> None:
        for pattern in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        check_overrides(config_name, sys.argv[1:])
        run()

    return main


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose the config once before Hydra runs, so an unknown key, a bad value or a missing
    required option is one line on stderr rather than Hydra's multi-line report. Flags
    (``--help``, ``--multirun`` …) are left to Hydra."""
    if any(arg.startswith("-") for arg in overrides):
        return
    try:
        with hydra.initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra.compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        fail(_one_line(err))
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        fail(f"missing required option(s) {', '.join(missing)}: pass them as key=value")


def _user_error(err: BaseException) -> BaseException | None:
    """The ``BitLMError`` (or config error) behind ``err``, if any: Hydra's ``instantiate``
    wraps exceptions raised in constructors, so follow the ``raise … from`` chain."""
    while err is not None:
        if isinstance(err, (BitLMError, OmegaConfBaseException)):
            return err
        err = err.__cause__
    return None


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of mandatory values (``???``) still unset, without resolving interpolations
    (``${hydra:…}`` only resolves inside a running app)."""
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _missing_keys(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def objective(cfg: DictConfig, result: dict[str, Any]) -> float | None:
    """What a Hydra sweeper minimises (``hparams_search=optuna``): the summary value named by
    ``cfg.optimized_metric``; None when the config names none."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if not isinstance(result.get(name), (int, float)):
        numeric = sorted(k for k, v in result.items() if isinstance(v, (int, float)))
        fail(f"optimized_metric={name} is not a number in the summary; choose one of {numeric}")
    return float(result[name])


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


@contextlib.contextmanager
def optional_dependencies(command: str, extra: str):
    """Imports inside the block that fail because an optional dependency is missing become one
    ``BitLMError`` naming the pip extra that provides it."""
    try:
        yield
    except ModuleNotFoundError as err:
        raise BitLMError(
            f"{command} needs {err.name}, which is not installed: pip install 'bitlm[{extra}]'"
        ) from err


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise BitLMError(f"unknown device {name!r}: use auto, cpu or cuda") from err
