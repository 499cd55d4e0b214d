"""What every bitlm command shares: config location, override checking, errors, JSON output.

Contract (scripts rely on it): progress and logs go to stderr (and the run's train.log); the
last line on stdout is one JSON object; a user mistake prints ``error: <one line>`` to stderr
and exits with status 2. In a multirun a job that fails is such a line naming the job, and the
other jobs run (``bitlm.app.sweep``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, InstantiationException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bitlm.app import sweep
from bitlm.app.config_types import check_value
from bitlm.core.errors import BitLMError
from bitlm.training.callbacks.progress import log_to_files

Task = Callable[[DictConfig], dict[str, Any]]

TEXT_FILE_OPTIONS = ("prompt",)
"""Free-text options that also have a ``<name>_file`` form (no quoting needed)."""
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


def config_dir() -> Path:
    """The Hydra config tree: bundled in the wheel as ``bitlm/configs``, or the repository's
    top-level ``configs/`` for a source (editable) install."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "configs"
    return bundled if bundled.is_dir() else package.parents[1] / "configs"


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
"""Loggers that Lightning, imported before Hydra configures logging, gives a stderr handler of
their own (lightning/__init__.py), the last two not propagating (lightning/pytorch/__init__.py):
their lines missed train.log, or would show twice on stderr."""
HYDRA_OWN_FLAGS = ("help", "hydra_help", "shell_completion", "info", "experimental_rerun")
"""Command-line flags whose work is Hydra's alone: help, completion, information, a rerun."""

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
            user_error = _user_error(err)
            if multirun:
                if user_error is None:
                    sweep.report_failure(f"{type(err).__name__}: {_one_line(err)}", err)
                else:
                    sweep.report_failure(_one_line(user_error))
                return None
            if user_error is None:  # Hydra prints the traceback on stderr; the log keeps it too
                log_to_files(log, logging.ERROR, "the run ended with an error:", err)
                raise
            fail(_one_line(user_error))
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


def check_overrides(config_name: str, argv: list[str]) -> None:
    """Compose the config before Hydra runs, as the command line will (``--config-name``,
    ``--config-path``, ``--config-dir``; ``--cfg``, ``-m`` …), so that an unknown key, a bad
    value or a missing required option is one line on stderr rather than Hydra's multi-line
    report, and check that every ``key=value`` is of a kind its key admits
    (``config_types.check_value``). In a multirun (``-m``, or a config setting ``hydra.mode:
    MULTIRUN`` such as ``hparams_search=optuna``) each value of a sweep is checked, so a
    mistake that would fail every job is refused once, before any runs. ``--help``, ``--info``
    and the like, and flags Hydra does not know, are left to Hydra."""
    args, unknown = get_args_parser().parse_known_args(argv)
    if unknown or any(getattr(args, flag) for flag in HYDRA_OWN_FLAGS):
        return
    if args.run + args.multirun + (args.cfg is not None) > 1:
        fail("give only one of --run, --multirun and --cfg")
    if args.resolve and args.cfg is None:
        fail("--resolve goes with --cfg (job, hydra or all)")
    for arg in args.overrides:
        if not _is_utf8(arg):
            fail(_not_utf8_hint(arg))
    try:
        with _hydra_as_the_command(args):
            _check_jobs(args.config_name or config_name, args)
    except (HydraException, OmegaConfBaseException) as err:
        fail(_one_line(err))


@contextlib.contextmanager
def _hydra_as_the_command(args: argparse.Namespace) -> Iterator[None]:
    """Hydra set up to find configs where the command will: the config tree or
    ``--config-path`` (relative to this module, as ``hydra.main`` reads it), and, before the
    schemas, ``--config-dir``."""
    primary = args.config_path or str(config_dir())
    search_path = create_automatic_config_search_path(None, __name__, primary)
    if args.config_dir is not None:
        folder = os.path.abspath(args.config_dir)
        if not os.path.isdir(folder):
            fail(f"--config-dir {folder} is not a folder")
        anchor = SearchPathQuery(provider="schema")
        search_path.prepend("command-line", f"file://{folder}", anchor=anchor)
    backup = get_gh_backup()
    Hydra.create_main_hydra2(task_name="check", config_search_path=search_path)
    try:
        yield
    finally:
        restore_gh_from_backup(backup)


def _check_jobs(config_name: str, args: argparse.Namespace) -> None:
    """Check the first job (every sweep at its first value) in full; then each other value of
    a sweep: a group option by composing its job, any other value by its kind. A sweep outside
    a multirun (``--cfg`` shows one job's config) is a value with an unquoted comma."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    parsed = parser.parse_overrides(args.overrides)
    values = [_job_values(override) for override in parsed]
    first = [v[0] for v in values if v]
    cfg = hydra.compose(config_name, overrides=first, return_hydra_config=True)
    sweeps = [override for override in parsed if override.is_sweep_override()]
    multirun = args.multirun or (args.cfg is None and cfg.hydra.mode == RunMode.MULTIRUN)
    if sweeps and not multirun:
        fail(_unquoted_hint(sweeps[0]))
    ConfigLoaderImpl.validate_sweep_overrides_legal(parsed, RunMode.MULTIRUN, from_shell=True)
    given, default = _check_job(config_name, parser.parse_overrides(first), cfg)
    for index, others in enumerate(values):
        for line in others[1:]:
            override = parser.parse_override(line)
            if _selects_group(override):
                job = [v[0] if i != index else line for i, v in enumerate(values) if v]
                composed = hydra.compose(config_name, overrides=job, return_hydra_config=True)
                _check_job(config_name, parser.parse_overrides(job), composed)
            else:
                _check_kind(override, given, default)


def _job_values(override: Override) -> list[str]:
    """``override`` as the jobs of a sweep get it: itself; or one ``key=value`` per value of a
    choice, range or glob sweep, as Hydra's basic sweeper writes them; or none for an interval,
    whose values the Optuna sweeper draws."""
    if not override.is_sweep_override():
        return [override.input_line]
    if not override.is_discrete_sweep():
        return []
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def _check_job(
    config_name: str, overrides: list[Override], cfg: DictConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job composed as ``cfg`` sets every required option, and each of its ``overrides``
    has a value of a kind its key admits. Returns that config and the one its group choices
    (and Hydra settings: ``hydra.searchpath``) alone give, whose values the overrides replace,
    as containers."""
    groups = [o for o in overrides if _selects_group(o)]
    kept = [o.input_line for o in overrides if o in groups or _is_hydra(o)]  # hydra.searchpath
    defaults = hydra.compose(config_name, overrides=kept)
    given = OmegaConf.to_container(cfg, resolve=False)
    del given["hydra"]  # Hydra fills its own mandatory values in as it runs
    missing = _missing_keys(given)
    if missing:
        fail(f"missing required option(s) {', '.join(missing)}: pass them as key=value")
    default = OmegaConf.to_container(defaults, resolve=False)
    for override in overrides:
        if not (override.is_delete() or override in groups or _is_hydra(override)):
            _check_kind(override, given, default)
    return given, default


def _check_kind(override: Override, given: dict[str, Any], default: dict[str, Any]) -> None:
    key = override.key_or_group
    try:
        check_value(key, override.value(), _node(default, key)[0], _node(given, key)[1])
    except BitLMError as err:
        fail(str(err))


def _selects_group(override: Override) -> bool:
    """``model=tiny``, ``callbacks=[default,compression]``: a choice of config group."""
    repository = GlobalHydra.instance().config_loader().repository
    return repository.group_exists(override.key_or_group)


def _is_hydra(override: Override) -> bool:
    return override.key_or_group.split(".")[0] == "hydra"


def _node(config: dict[str, Any], key: str) -> tuple[Any, str | None]:
    """The value at dotted ``key`` of a config container (interpolations left unresolved: a
    ``${…}`` stays text) and the ``_target_`` of the node holding it (None if there is none)."""
    node: Any = config
    target = None
    for part in key.split("."):
        target = node.get("_target_") if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None, None
    return node, target


def _is_utf8(text: str) -> bool:
    """False for an argument whose bytes were not UTF-8 (Python escapes them as surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _not_utf8_hint(arg: str) -> str:
    key = arg.partition("=")[0]
    shown = arg.encode(errors="surrogateescape")[:40]
    return f"{shown!r} is not UTF-8 text, which is all an override can hold" + _file_hint(key)


def _unquoted_hint(override: Override) -> str:
    """A value Hydra reads as a list of choices (``prompt=To be, or not`` has a comma)."""
    key, _, value = override.input_line.partition("=")
    return (
        f"{override.input_line!r}: Hydra reads a comma in a value as a list of choices; quote "
        f"the whole value, e.g. \"{key}='{value}'\" (with the outer quotes for the shell)"
        + _file_hint(key)
    )


def _file_hint(key: str) -> str:
    """Where ``key`` has a ``<key>_file`` form: how to pass the text that way."""
    if key not in TEXT_FILE_OPTIONS:
        return ""
    return f"; or pass the text in a file: {key}_file=PATH ({key}_file=- reads stdin)"


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


def _user_error(err: BaseException) -> BaseException | None:
    """The ``BitLMError`` (or config error) behind ``err``, if any: Hydra's ``instantiate``
    wraps exceptions raised in constructors, so follow the ``raise … from`` chain. A value a
    library's constructor refuses (Lightning's ``MisconfigurationException``, a ``TypeError``
    or ``ValueError`` from the call ``instantiate`` made) is the user's too, named by its key.
    ``HYDRA_FULL_ERROR=1`` keeps the traceback of those."""
    while err is not None:
        if isinstance(err, (BitLMError, OmegaConfBaseException)):
            return err
        cause = err.__cause__
        refused = isinstance(cause, (MisconfigurationException, TypeError, ValueError))
        if isinstance(err, InstantiationException) and refused and not _full_errors():
            key = str(err).rpartition("full_key: ")[2].strip() or "config"
            return BitLMError(f"{key}: {_one_line(cause)}")
        err = cause
    return None


def _full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


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
        raise BitLMError(
            f"optimized_metric={name} is not a number in the summary; choose one of {numeric}"
        )
    return float(result[name])


def fail(message: str) -> None:
    """``error: message`` on stderr and in the run's log (if one is open); exit status 2."""
    line = f"error: {message}"
    log_to_files(log, logging.ERROR, line)
    print(line, file=sys.stderr, flush=True)
    sys.exit(2)


def _one_line(err: BaseException) -> str:
    """``err``'s whole message on one line: its lines joined by ``; `` (a space after a full
    stop), the list under a heading that ends in ``:`` (Hydra's ``Available options in
    'logger':``) by ``, ``; without Hydra's ``Config search path:`` block (where it looked,
    not what is wrong)."""
    parts: list[str] = []
    listing = False
    for raw in str(err).split("\nConfig search path:")[0].splitlines():
        line = raw.strip()
        if not line:
            continue
        if raw[0].isspace() and parts and (listing or parts[-1].endswith(":")):
            parts[-1] += (", " if listing else " ") + line
            listing = True
        else:
            parts.append(line)
            listing = False
    if not parts:
        return type(err).__name__
    return "".join(p + (" " if p.endswith(".") else "; ") for p in parts[:-1]) + parts[-1]


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
