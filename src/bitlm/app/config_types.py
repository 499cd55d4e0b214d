"""Typed checks of command-line overrides: ``module.optimizer.lr=abc`` or ``kv_cache=maybe`` is
one line naming the key, before anything runs, instead of a traceback from wherever the value lands.

The type a key must keep comes from the code the value goes to: for a key of a node built
with ``_target_`` (the module, data, trainer, callbacks, loggers), the annotation of that
parameter of the target's constructor; for any other key (a command's own options), the kind
of its default. Checks are about kinds (bool, integer, number, text, list, mapping, null), not
values: ranges and choices are the code's to check, with its own messages.
"""

from __future__ import annotations

import inspect
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_object

from bitlm.core.errors import BitLMError

KIND_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "text",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def check_value(key: str, value: Any, default: Any, target: str | None) -> None:
    """Raise ``BitLMError`` unless ``value`` (the override of ``key``) has a kind that
    ``key``'s parameter of ``target`` admits (``target``: the ``_target_`` of the node holding
    ``key``, or None), or, when that is unknown, the kind of ``default``. A non-finite number
    is refused everywhere: no option means NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BitLMError(f"{key}={value} is not a finite number")
    admitted = _annotated_kinds(target, key.rsplit(".", 1)[-1]) if target else None
    if admitted is None:
        admitted = _default_kinds(default)
    if admitted is None or _kind(value) in admitted:
        return
    shown = admitted - {type(None)}  # null is always there to say "no value"
    if float in shown:
        shown.discard(int)  # "a number" covers integers
    expected = " or ".join(KIND_NAMES[kind] for kind in KIND_NAMES if kind in shown)
    raise BitLMError(f"{key}={value!r} is not {expected} (its default is {default!r})")


def _kind(value: Any) -> type:
    if isinstance(value, Mapping):
        return dict
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list
    return type(value)


def _default_kinds(default: Any) -> set[type] | None:
    """A default of true/false, an integer or a number fixes the kind (null is always fine);
    text, null, lists and mappings leave the value to the code that reads it."""
    kind = _kind(default)
    if kind in (bool, int):
        return {kind, type(None)}
    if kind is float:
        return {float, int, type(None)}
    return None


def _annotated_kinds(target: str, parameter: str) -> set[type] | None:
    """The kinds the annotation of ``target(parameter=…)`` admits; None when the target, the
    parameter or its annotation cannot be read (then the default decides)."""
    try:
        constructor = get_object(target)
        function = constructor.__init__ if inspect.isclass(constructor) else constructor
        hints = typing.get_type_hints(function)
    except Exception:  # an unimportable target fails later, with instantiate's own message
        return None
    if parameter not in hints:
        return None
    return _kinds(hints[parameter])


def _kinds(annotation: Any) -> set[type] | None:
    """Kinds of config values ``annotation`` admits: ``Optional[int]`` → {int, None},
    ``Literal[32, "bf16-mixed"]`` → {int, str}, ``Sequence[str]`` → {list, str} (text is a
    sequence); None for ``Any`` (anything goes)."""
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_kinds(arg) for arg in typing.get_args(annotation)]
        return None if None in parts else set().union(*parts)
    if origin is typing.Literal:
        return {_kind(arg) for arg in typing.get_args(annotation)}
    cls = origin or annotation
    if not inspect.isclass(cls) or cls is object:
        return None
    if cls is bool:  # before the rest: bool is an int subclass, not an integer option
        return {bool}
    scalars = (int, float, str, type(None))
    kinds = {kind for kind in scalars if issubclass(kind, cls) or issubclass(cls, kind)}
    if float in kinds:
        kinds.add(int)  # an integer is a number
    if issubclass(cls, os.PathLike):
        kinds.add(str)  # a path is given as text
    if issubclass(cls, Mapping):
        kinds.add(dict)
    if issubclass(cls, (Sequence, tuple)) or issubclass(list, cls):
        kinds.add(list)  # a config list also fills a tuple parameter
    return kinds  # empty: a class no config value is (an Accelerator, a timedelta)
