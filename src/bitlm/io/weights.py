"""Weights into a model, as every reader of the model format does it (exported folders,
``.ckpt`` files, sharded checkpoints): strict names and shapes, and no NaN or inf, each refusal
a one-line ``BitLMError`` naming the file and the weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bitlm.core.errors import BitLMError


def with_state(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    assign: bool = False,
    strict: bool = True,
) -> torch.nn.Module:
    """``model`` with ``state`` loaded (``assign``: take the saved tensors themselves, needed
    when their type differs from the model's, as quantized weights' does). ``strict``: weights
    the model lacks or has beyond ``state`` are an error naming them."""
    expected, given = set(model.state_dict()), set(state)
    problems = [
        f"{kind} weights {_names(keys)}"
        for kind, keys in (("missing", expected - given), ("unexpected", given - expected))
        if keys
    ]
    if strict and problems:
        raise BitLMError(f"checkpoint {path} does not match its config: {'; '.join(problems)}")
    check_finite(state, path)
    try:
        model.load_state_dict(state, assign=assign, strict=strict)
    except RuntimeError as err:  # shapes that differ from the config's
        lines = [line.strip() for line in str(err).strip().splitlines()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise BitLMError(f"checkpoint {path} does not match its config: {detail}") from err
    return model


def check_finite(state: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights holding NaN or inf (a damaged file, or the state of a diverged run): a
    model that loads must not answer NaN."""
    bad = nonfinite_weights(state)
    if bad:
        raise BitLMError(
            f"{path}: weight {bad[0]} holds NaN or inf (a damaged file, or weights of a "
            "diverged run): load another checkpoint or export"
        )


def nonfinite_weights(state: Mapping[str, Any]) -> list[str]:
    """The names, in ``state``'s order, of the weights holding NaN or inf. Plain float tensors
    are checked; quantized weights (torchao tensor types) hold integers and scales written from
    finite floats, and other values (step counters, nested state) are not weights."""
    return [
        name
        for name, value in state.items()
        if type(value) is torch.Tensor
        and value.is_floating_point()
        and not bool(value.isfinite().all())
    ]


def reason(err: Exception) -> str:
    """The exception's type and the first line of its message: what a one-line error quotes."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _names(keys: set[str], shown: int = 3) -> str:
    names = sorted(keys)
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
