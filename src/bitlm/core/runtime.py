"""Where the bundled Hydra configs are, and which torch device a command runs on."""

from __future__ import annotations

from pathlib import Path

import torch

from bitlm.core.errors import BitLMError


def config_dir() -> Path:
    """The Hydra config tree: bundled in the wheel as ``bitlm/configs``, or the repository's
    top-level ``configs/`` for a source (editable) install."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "configs"
    return bundled if bundled.is_dir() else package.parents[1] / "configs"


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; otherwise any torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise BitLMError(f"unknown device {name!r}: use auto, cpu or cuda") from err
