"""The exported model folder: what ``bitlm-train`` exports, ``bitlm-serve`` saves, and the
Hugging Face Hub holds.

An exported model is a folder in the layout the Hub expects: ``config.json`` (the
``ModelConfig`` plus a format tag), ``model.safetensors`` (the weights; ``model.pt`` for a
quantized model) and ``README.md`` (a model card with the architecture and the bpb and K/C/S
telemetry it was exported with, ``bitlm.io.card``). Folders of format ``bitlm/v1`` written by
any earlier version load as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from bitlm.core.errors import BitLMError
from bitlm.core.files import staged_dir
from bitlm.io.card import write_card
from bitlm.io.quantize import quantize
from bitlm.io.weights import reason, with_state
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

FORMAT = "bitlm/v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
QUANTIZED_WEIGHTS_NAME = "model.pt"  # torchao tensors (bitlm.io.quantize); see write_weights


def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``directory/{config.json,model.safetensors,README.md}`` without ever exposing a
    partial model.

    ``state_dict``: the weights to write, when ``model.state_dict()`` does not hold them whole
    (a sharded, compiled or fake-quantized model's gathered state): they are written from a
    plain model of the same config. A model quantized by ``bitlm.io.quantize`` is written as it
    is (``write_weights``). ``metrics``: the numbers the model card reports (``val/bpb``,
    ``val/K`` …). ``extra_files``: {file name: text} written beside them (a distilled model's
    metrics.json). The files are written into a temporary sibling folder that replaces
    ``directory`` only once complete (``bitlm.core.files.staged_dir``): a crash leaves the old
    complete model or the new one.
    """
    directory = Path(directory)
    if state_dict is not None:
        model = with_state(build_model(model.config), state_dict, directory)
    with staged_dir(directory) as staging:
        write_weights(model.state_dict(), staging, getattr(model, "quantization", None))
        config = config_json(model, metrics)
        (staging / CONFIG_NAME).write_text(json.dumps(config, sort_keys=True, indent=2))
        write_card(model, config, staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return directory


def config_json(model: torch.nn.Module, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``config.json``: the format tag, the ``ModelConfig``, the
    ``bitlm.io.quantize`` scheme of a quantized model (``model.quantization``) and the metrics
    measured at export (finite numbers only; the model card shows them, a server reports them).
    """
    config: dict[str, Any] = {"format": FORMAT, "model": model.config.to_dict()}
    scheme = getattr(model, "quantization", None)
    if scheme is not None:
        config["quantization"] = scheme
    numbers = _finite(metrics or {})
    if numbers:
        config["metrics"] = numbers
    return config


def write_weights(
    state_dict: Mapping[str, torch.Tensor], directory: Path, quantization: str | None = None
) -> None:
    """``directory/model.safetensors``; for a quantized model ``model.pt`` instead: torchao's
    int8 / int4 weight tensors (values with their scales) are not plain tensors, which
    safetensors cannot hold, so they are saved with ``torch.save`` and loaded with
    ``weights_only=True`` (which torchao's tensor types support)."""
    if quantization is not None:
        torch.save(dict(state_dict), directory / QUANTIZED_WEIGHTS_NAME)
    else:
        (directory / WEIGHTS_NAME).write_bytes(serialized_weights(state_dict))


def serialized_weights(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """The bytes of ``model.safetensors`` for ``state_dict`` (so its size is known unwritten)."""
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return save(state, metadata={"format": FORMAT})


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` (floats, ints or one-element tensors) as floats."""
    numbers = {k: float(v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
    return {k: v for k, v in numbers.items() if math.isfinite(v)}


def read_folder(path: str | Path, strict: bool = True) -> torch.nn.Module:
    """The model in an exported folder, of the class its config names; ``strict``: a missing
    or unexpected weight is an error (``BitLMError`` naming them), not a random layer."""
    path = Path(path)
    meta = read_config(path)
    model = build_model(ModelConfig.from_dict(meta["model"]))
    scheme = meta.get("quantization")
    weights_file = path / (WEIGHTS_NAME if scheme is None else QUANTIZED_WEIGHTS_NAME)
    if not weights_file.is_file():
        raise BitLMError(f"{path} is not an exported bitlm model: {weights_file.name} is missing")
    if scheme is not None:
        quantize(model, scheme)  # the layers the saved quantized weights belong to
    try:
        if scheme is None:
            state = load_file(weights_file)
        else:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and OS errors all mean "unreadable"
        raise BitLMError(f"could not read model folder {path}: {reason(err)}") from err
    return with_state(model, state, path, assign=scheme is not None, strict=strict)


def read_config(path: str | Path) -> dict[str, Any]:
    """The content of an exported folder's ``config.json`` (``config_json``), checked."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise BitLMError(f"{path} is not an exported bitlm model: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise BitLMError(f"could not read model folder {path}: {reason(err)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise BitLMError(f"{config_file} is not a bitlm config (expected format {FORMAT!r})")
    return meta


def quantization_of(path: str | Path) -> str | None:
    """The ``bitlm.io.quantize`` scheme of an exported model folder; None for float weights (and
    for checkpoints, which are always float)."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("quantization")
    except (OSError, ValueError, AttributeError):
        return None


def stored_size(path: str | Path) -> int:
    """Bytes ``path`` takes on disk: the file, or every file below the folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
