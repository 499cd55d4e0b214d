"""Saving and loading trained models: the exported folder format, and Lightning checkpoints.

An exported model is a folder with ``config.json`` (the ``ModelConfig`` plus a format tag) and
``model.safetensors`` (the weights), the layout the Hugging Face Hub expects. ``load_model``
also reads a Lightning ``.ckpt`` written by ``bitlm-train`` so every command takes either.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from bitlm.errors import BitLMError
from bitlm.files import staged_dir
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

FORMAT = "bitlm/v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
QUANTIZED_WEIGHTS_NAME = "model.pt"  # torchao tensors (bitlm.quantize); see save_pretrained
DISTRIBUTED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
LIGHTNING_METADATA = "meta.pt"  # what Lightning saves beside them: hyper-parameters, loops


def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    quantization: str | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``directory/{config.json,model.safetensors}`` without ever exposing a partial model.

    ``state_dict``: the weights to write, when ``model.state_dict()`` does not hold them whole
    (a sharded model's gathered state); by default the model's own.
    ``quantization``: the ``bitlm.quantize`` scheme ``model`` was quantized with. Its torchao
    weight tensors (int8 / int4 values with their scales) are not plain tensors, which
    safetensors cannot hold: they go to ``model.pt`` (``torch.save``; loaded with
    ``weights_only=True``, which torchao's tensor types support), and config.json names the
    scheme so that ``load_model`` rebuilds the same layers.
    ``extra_files``: {file name: text} written beside them (a distilled model's metrics.json).
    The files are written into a temporary sibling folder that replaces ``directory`` only once
    complete (``bitlm.files.staged_dir``): a crash leaves the old complete model or the new one.
    """
    directory = Path(directory)
    state_dict = model.state_dict() if state_dict is None else state_dict
    with staged_dir(directory) as staging:
        config = {"format": FORMAT, "model": model.config.to_dict()}
        if quantization is not None:
            config["quantization"] = quantization
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if quantization is not None:
            torch.save(dict(state_dict), staging / QUANTIZED_WEIGHTS_NAME)
        else:
            (staging / WEIGHTS_NAME).write_bytes(serialized_weights(state_dict))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return directory


def serialized_weights(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """The bytes of ``model.safetensors`` for ``state_dict`` (so its size is known unwritten)."""
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return save(state, metadata={"format": FORMAT})


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model (bit or byte-level, per its config) from an exported folder (quantized or
    not) or a ``bitlm-train`` Lightning checkpoint: a ``.ckpt`` file, or the ``.ckpt`` folder of
    sharded state that ``trainer=fsdp`` writes (read whole into this one process).

    Raises ``BitLMError`` with a one-line reason for a missing, unreadable or foreign file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise BitLMError(f"checkpoint not found: {path}")
    if (path / DISTRIBUTED_METADATA).is_file():
        model = _read_distributed_checkpoint(path)
    elif path.is_dir():
        model = _read_folder(path)
    else:
        config, state = _read_lightning_checkpoint(path)
        model = _with_state(build_model(config), state, path)
    return model.to(map_location).eval()


def stored_size(path: str | Path) -> int:
    """Bytes ``path`` takes on disk: the file, or every file below the folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def quantization_of(path: str | Path) -> str | None:
    """The ``bitlm.quantize`` scheme of an exported model folder; None for float weights (and
    for checkpoints, which are always float)."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("quantization")
    except (OSError, ValueError, AttributeError):
        return None


def _with_state(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, assign: bool = False
) -> torch.nn.Module:
    """``model`` with ``state`` loaded strictly (``assign``: take the saved tensors themselves,
    needed when their type differs from the model's, as quantized weights' does)."""
    try:
        model.load_state_dict(state, assign=assign)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise BitLMError(f"checkpoint {path} does not match its config: {first_line}") from err
    return model


def _read_folder(path: Path) -> torch.nn.Module:
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise BitLMError(f"{path} is not an exported bitlm model: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise BitLMError(f"could not read model folder {path}: {_reason(err)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BitLMError(f"{config_file} is not a bitlm config (expected format {FORMAT!r})")
    model = build_model(ModelConfig.from_dict(meta["model"]))
    scheme = meta.get("quantization")
    weights_file = path / (WEIGHTS_NAME if scheme is None else QUANTIZED_WEIGHTS_NAME)
    if not weights_file.is_file():
        raise BitLMError(f"{path} is not an exported bitlm model: {weights_file.name} is missing")
    if scheme is not None:
        from bitlm.quantize import quantize

        quantize(model, scheme)  # the layers the saved quantized weights belong to
    try:
        if scheme is None:
            state = load_file(weights_file)
        else:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and OS errors all mean "unreadable"
        raise BitLMError(f"could not read model folder {path}: {_reason(err)}") from err
    return _with_state(model, state, path, assign=scheme is not None)


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


def _read_distributed_checkpoint(path: Path) -> torch.nn.Module:
    """A sharded checkpoint folder (``torch.distributed.checkpoint`` files plus Lightning's
    ``meta.pt``): the model is built from the hyper-parameters in ``meta.pt``, then the shards
    of its weights are read into it in place (``dcp.load`` without a process group)."""
    import torch.distributed.checkpoint as dcp

    try:
        meta = torch.load(path / LIGHTNING_METADATA, map_location="cpu", weights_only=True)
        config = ModelConfig.from_dict(meta["hyper_parameters"]["model"])
    except (OSError, KeyError, TypeError, RuntimeError) as err:
        raise BitLMError(
            f"{path} is not a checkpoint written by bitlm-train: {_reason(err)}"
        ) from err
    model = build_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"state_dict": state}, checkpoint_id=path, no_dist=True)
    except Exception as err:  # missing shards, foreign keys, unreadable files
        raise BitLMError(f"could not read sharded checkpoint {path}: {_reason(err)}") from err
    return _with_state(model, {k.removeprefix("model."): v for k, v in state.items()}, path)


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
