"""Command-line overrides checked before anything runs: each ``key=value`` composes, names a
key that exists (or one line saying where a renamed one went) and has a value of the kind its
key admits; in a multirun every job's values are checked."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bitlm.app.config_types import check_value
from bitlm.app.failures import fail, one_line
from bitlm.core.errors import BitLMError
from bitlm.core.runtime import config_dir

TEXT_FILE_OPTIONS = ("prompt",)
"""Free-text options that also have a ``<name>_file`` form (no quoting needed)."""

HYDRA_OWN_FLAGS = ("help", "hydra_help", "shell_completion", "info", "experimental_rerun")
"""Command-line flags whose work is Hydra's alone: help, completion, information, a rerun."""

RENAMED_KEYS = {
    **{f"module.{k}": f"module.optimizer.{k}" for k in ("lr", "betas", "weight_decay")},
    **{f"module.{k}": f"module.scheduler.{k}" for k in ("warmup_steps", "min_lr_ratio")},
}
"""Options an earlier release had, and where they live now (the optimiser and its schedule
became Hydra-injectable configs, ``bitlm.training.optim``)."""


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
        fail(one_line(err))


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
    for override in parsed:
        _check_not_renamed(override.key_or_group)
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


def _check_not_renamed(key: str) -> None:
    """A key an earlier release had is one line naming its new place."""
    if key in RENAMED_KEYS:
        fail(f"{key} is now {RENAMED_KEYS[key]}: pass {RENAMED_KEYS[key]}=… instead")


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


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of mandatory values (``???``) still unset, without resolving interpolations
    (``${hydra:…}`` only resolves inside a running app)."""
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _missing_keys(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "???" else []
