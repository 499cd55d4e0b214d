"""Saving and loading trained models: the exported folder format, and Lightning checkpoints.

An exported model is a folder with ``config.json`` (the ``ModelConfig`` plus a format tag) and
``model.safetensors`` (the weights), the layout the Hugging Face Hub expects. ``load_model``
also reads a Lightning ``.ckpt`` written by ``bitlm-train`` so every command takes either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bitlm.errors import BitLMError
from bitlm.files import staged_dir
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

FORMAT = "bitlm/v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``directory/{config.json,model.safetensors}`` without ever exposing a partial model.

    The files are written into a temporary sibling folder that replaces ``directory`` only once
    complete (``bitlm.files.staged_dir``): a crash leaves the old complete model or the new one.
    """
    directory = Path(directory)
    with staged_dir(directory) as staging:
        config = {"format": FORMAT, "model": model.config.to_dict()}
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_NAME, metadata={"format": FORMAT})
    return directory


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model (bit or byte-level, per its config) from an exported folder or a
    ``bitlm-train`` Lightning checkpoint (.ckpt).

    Raises ``BitLMError`` with a one-line reason for a missing, unreadable or foreign file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BitLMError(f"checkpoint not found: {path}")
    if path.is_dir():
        config, state = _read_folder(path)
    else:
        config, state = _read_lightning_checkpoint(path)
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise BitLMError(f"checkpoint {path} does not match its config: {first_line}") from err
    return model.to(map_location).eval()


def _read_folder(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise BitLMError(f"{path} is not an exported bitlm model: {f.name} is missing")
    try:
        meta = json.loads(config_file.read_text())
        state = load_file(weights_file)
    except Exception as err:  # json, safetensors and OS errors all mean "unreadable"
        raise BitLMError(f"could not read model folder {path}: {_reason(err)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BitLMError(f"{config_file} is not a bitlm config (expected format {FORMAT!r})")
    return ModelConfig.from_dict(meta["model"]), state


def _read_lightning_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and OS errors all mean "corrupt or not a checkpoint"
        raise BitLMError(f"could not read checkpoint {path}: {_reason(err)}") from err
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "model" not in hparams or "state_dict" not in ckpt:
        raise BitLMError(f"{path} is not a checkpoint written by bitlm-train")
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return ModelConfig.from_dict(hparams["model"]), state


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
