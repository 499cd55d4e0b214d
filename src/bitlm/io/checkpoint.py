"""``bitlm-train``'s checkpoints, read without Lightning: a ``.ckpt`` file (one ``torch.save``
of the LightningModule's state, hyper-parameters included), or the ``.ckpt`` folder of sharded
state that ``trainer=fsdp`` writes (``torch.distributed.checkpoint`` files plus Lightning's
``meta.pt``), read whole into this one process. Either is checked as thoroughly as an export:
every weight read, strict names and shapes, no NaN or inf."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from bitlm.core.errors import BitLMError
from bitlm.io.weights import check_finite, reason, with_state
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

DISTRIBUTED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
LIGHTNING_METADATA = "meta.pt"  # what Lightning saves beside them: hyper-parameters, loops


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is the folder of a sharded (``torch.distributed.checkpoint``) one."""
    return (Path(path) / DISTRIBUTED_METADATA).is_file()


def read_checkpoint(path: str | Path) -> torch.nn.Module:
    """The model of a ``bitlm-train`` checkpoint: a ``.ckpt`` file or a sharded folder."""
    path = Path(path)
    if is_sharded(path):
        return _read_distributed_checkpoint(path)
    config, state = _model_state(_load_checkpoint_file(path), path)
    return with_state(build_model(config), state, path)


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a ``bitlm-train`` checkpoint (a ``.ckpt`` file, or the folder of a
    sharded one) was saved at, once it has been read whole and its weights found finite: what
    a resume checks before training, so that a truncated or damaged file is one line
    (``BitLMError``), not a traceback from deep inside Lightning."""
    path = Path(path)
    if is_sharded(path):
        _read_distributed_checkpoint(path)  # reads every shard, checks the weights
        meta = torch.load(path / LIGHTNING_METADATA, map_location="cpu", weights_only=True)
        return int(meta.get("global_step", 0))
    ckpt = _load_checkpoint_file(path)
    _, state = _model_state(ckpt, path)
    check_finite(state, path)
    return int(ckpt.get("global_step", 0))


def _load_checkpoint_file(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and OS errors all mean "corrupt or not a checkpoint"
        raise BitLMError(
            f"could not read checkpoint {path} (truncated or damaged?): {reason(err)}"
        ) from err
    if not isinstance(ckpt, dict):
        raise BitLMError(f"{path} is not a checkpoint written by bitlm-train")
    return ckpt


def _model_state(ckpt: dict[str, Any], path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and the model's weights (``model.`` prefix removed) of a checkpoint."""
    hparams = ckpt.get("hyper_parameters", {})
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
            f"{path} is not a checkpoint written by bitlm-train: {reason(err)}"
        ) from err
    model = build_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"state_dict": state}, checkpoint_id=path, no_dist=True)
    except Exception as err:  # missing shards, foreign keys, unreadable files
        raise BitLMError(f"could not read sharded checkpoint {path}: {reason(err)}") from err
    return with_state(model, {k.removeprefix("model."): v for k, v in state.items()}, path)
