"""What every bitlm command shares: config location, override checking, errors, JSON output.

Contract (scripts rely on it): progress and logs go to stderr; the last line on stdout is one
JSON object; a user mistake prints ``error: <one line>`` to stderr and exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bitlm.cli.config_types import check_value
from bitlm.errors import BitLMError

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
            bad = _non_finite(result)
            if bad:  # NaN is not JSON, and a silent null would be a wrong answer
                fail(f"{bad[0]} came out as {bad[1]}, not a finite number: {NON_FINITE}")
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
    required option is one line on stderr rather than Hydra's multi-line report, and check
    that every ``key=value`` is of a kind its key admits (``config_types.check_value``). Flags
    (``--help``, ``--multirun`` …) are left to Hydra."""
    if any(arg.startswith("-") for arg in overrides):
        return
    for arg in overrides:
        if not _is_utf8(arg):
            fail(_not_utf8_hint(arg))
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        for override in parsed:
            if override.is_sweep_override():
                fail(_unquoted_hint(override))
        with hydra.initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra.compose(config_name, overrides=overrides)
            groups = [o for o in parsed if _selects_group(o)]
            defaults = hydra.compose(config_name, overrides=[o.input_line for o in groups])
    except (HydraException, OmegaConfBaseException) as err:
        fail(_one_line(err))
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        fail(f"missing required option(s) {', '.join(missing)}: pass them as key=value")
    given, default = (OmegaConf.to_container(c, resolve=False) for c in (cfg, defaults))
    for override in parsed:
        if not (override.is_delete() or override in groups or _is_hydra(override)):
            key = override.key_or_group
            value, target = _node(given, key)
            try:
                check_value(key, value, _node(default, key)[0], target)
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
