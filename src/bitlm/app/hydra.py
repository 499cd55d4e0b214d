"""What every bitlm command shares: config location, override checking, errors, JSON output.

Contract (scripts rely on it): progress and logs go to stderr (and the run's train.log); the
last line on stdout is one JSON object; a user mistake prints ``error: <one line>`` to stderr
and exits with status 2. In a multirun a job that fails is such a line naming the job, and the
other jobs run (``bitlm.app.sweep``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from bitlm.app import sweep
from bitlm.app.failures import fail, one_line, user_error
from bitlm.app.overrides import check_overrides
from bitlm.core.errors import BitLMError
from bitlm.core.runtime import config_dir
from bitlm.training.callbacks.progress import log_to_files

Task = Callable[[DictConfig], dict[str, Any]]

NON_FINITE = (
    "the model's outputs overflowed or its weights are damaged; check the model with bitlm-eval "
    "on a short file, or try trainer.precision / device=cpu"
)

# Upstream notices that say nothing to a bitlm user (library internals, not their settings).
HARMLESS_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # torch 2.13 deprecation inside Lightning
    # Lightning cannot see that the window order resumes from global_step (ResumableSampler)
    r".*your dataloader is not resumable.*",
)


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
"""Loggers that Lightning, imported before Hydra configures logging, gives a stderr handler of
their own (lightning/__init__.py), the last two not propagating (lightning/pytorch/__init__.py):
their lines missed train.log, or would show twice on stderr."""


log = logging.getLogger(__name__)


def hydra_app(config_name: str, task: Task, json_output: bool = True) -> Callable[[], None]:
    """Turn ``task(cfg) -> dict`` into a console-script ``main`` honouring the contract.
    ``json_output=False``: stdout is the task's own (``bitlm-mcp`` speaks MCP on it), and the
    task's result is not printed.

    A job of a multirun that fails (a user error, a non-finite result, any exception) does not
    end the sweep: it is one ``error:`` line on stderr naming the job, its record in the sweep
    folder (``bitlm.app.sweep``) and an objective of None, which the Optuna sweeper records as
    a failed trial (``float(None)`` fails; a NaN would make optuna 2's ``tell`` raise)."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def run(cfg: DictConfig) -> float | None:
        _log_through_root()
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            value = _complete(task, cfg, json_output)
        except Exception as err:
            mistake = user_error(err)
            if multirun:
                if mistake is None:
                    sweep.report_failure(f"{type(err).__name__}: {one_line(err)}", err)
                else:
                    sweep.report_failure(one_line(mistake))
                return None
            if mistake is None:  # Hydra prints the traceback on stderr; the log keeps it too
                log_to_files(log, logging.ERROR, "the run ended with an error:", err)
                raise
            fail(one_line(mistake))
        if multirun:
            sweep.record_job(None)
        return value

    def main() -> None:
        for pattern in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        check_overrides(config_name, sys.argv[1:])
        run()

    return main


def _complete(task: Task, cfg: DictConfig, json_output: bool) -> float | None:
    """Run ``task``, print its result as the JSON line, return the sweeper's objective."""
    stdout = contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext()
    with stdout:  # keep stdout for the JSON line
        result = task(cfg)
    printing = json_output and rank_zero_only.rank == 0  # other ranks end silently
    bad = _non_finite(result) if printing else None
    if bad:  # NaN is not JSON, and a silent null would be a wrong answer
        raise BitLMError(f"{bad[0]} came out as {bad[1]}, not a finite number: {NON_FINITE}")
    value = objective(cfg, result)
    if printing:
        print(json.dumps(result, ensure_ascii=False), flush=True)
    return value


def _log_through_root() -> None:
    """Send Lightning's log lines through the handlers Hydra has just configured (stderr and
    train.log) instead of the stderr handler Lightning gave them: in train.log, once on stderr."""
    if not logging.getLogger().handlers:  # logging left unconfigured: keep Lightning's own
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def _non_finite(result: Any, prefix: str = "") -> tuple[str, float] | None:
    """The dotted key and value of the first NaN or infinite number in ``result``, else None."""
    if isinstance(result, float) and not math.isfinite(result):
        return prefix.rstrip(".") or "the result", result
    items = result.items() if isinstance(result, dict) else []
    for key, value in items:
        bad = _non_finite(value, f"{prefix}{key}.")
        if bad is not None:
            return bad
    return None


def objective(cfg: DictConfig, result: dict[str, Any]) -> float | None:
    """What a Hydra sweeper minimises (``hparams_search=optuna``): the summary value named by
    ``cfg.optimized_metric``; None when the config names none."""
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if not isinstance(result.get(name), (int, float)):
        numeric = sorted(k for k, v in result.items() if isinstance(v, (int, float)))
        raise BitLMError(
            f"optimized_metric={name} is not a number in the summary; choose one of {numeric}"
        )
    return float(result[name])
