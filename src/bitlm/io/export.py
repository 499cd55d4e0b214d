"""Saving, loading and sharing trained models: the exported folder format, Lightning
checkpoints, and the Hugging Face Hub.

An exported model is a folder in the layout the Hub expects, written by the model classes'
``PyTorchModelHubMixin`` (``bitlm.model.pretrained``): ``config.json`` (the ``ModelConfig``
plus a format tag), ``model.safetensors`` (the weights) and ``README.md`` (a model card with
the architecture and the bpb and K/C/S telemetry it was exported with). ``load_model`` also
reads a Lightning ``.ckpt`` written by ``bitlm-train``, and ``hf://owner/name[@revision]``
(downloaded from the Hub), so every command takes any of them. ``push_to_hub`` uploads a
folder with the token from ``HF_TOKEN``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from safetensors.torch import load_file, save

from bitlm.core.errors import BitLMError
from bitlm.core.files import staged_dir
from bitlm.model import build_model
from bitlm.model.config import ModelConfig

FORMAT = "bitlm/v1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
QUANTIZED_WEIGHTS_NAME = "model.pt"  # torchao tensors (bitlm.format.quantize); see write_weights
CARD_NAME = "README.md"
DISTRIBUTED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
LIGHTNING_METADATA = "meta.pt"  # what Lightning saves beside them: hyper-parameters, loops
HUB_PREFIX = "hf://"
# what a download takes from a repository: the model, its card, a distilled model's metrics
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, QUANTIZED_WEIGHTS_NAME, CARD_NAME, "*.json"]


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
    plain model of the same config. A model quantized by ``bitlm.format.quantize`` is written as it
    is (``write_weights``). ``metrics``: the numbers the model card reports (``val/bpb``,
    ``val/K`` …). ``extra_files``: {file name: text} written beside them (a distilled model's
    metrics.json). The files are written into a temporary sibling folder that replaces
    ``directory`` only once complete (``bitlm.core.files.staged_dir``): a crash leaves the old
    complete model or the new one.
    """
    directory = Path(directory)
    if state_dict is not None:
        model = _with_state(build_model(model.config), state_dict, directory)
    with staged_dir(directory) as staging:
        model.save_pretrained(staging, config=config_json(model, metrics))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return directory


def config_json(model: torch.nn.Module, metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``config.json``: the format tag, the ``ModelConfig``, the
    ``bitlm.format.quantize`` scheme of a quantized model (``model.quantization``) and the metrics
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


def card_metrics(metrics: Mapping[str, float]) -> dict[str, str]:
    """``metrics`` as the model card prints them: 4 significant digits, sorted by name."""
    return {name: f"{value:.4g}" for name, value in sorted(metrics.items())}


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` (floats, ints or one-element tensors) as floats."""
    numbers = {k: float(v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
    return {k: v for k, v in numbers.items() if math.isfinite(v)}


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model (bit or byte-level, per its config) from an exported folder (quantized or
    not), a Hub repository ``hf://owner/name[@revision]``, or a ``bitlm-train`` Lightning
    checkpoint: a ``.ckpt`` file, or the ``.ckpt`` folder of sharded state that
    ``trainer=fsdp`` writes (read whole into this one process). Loading is strict.

    Raises ``BitLMError`` with a one-line reason for a missing, unreadable or foreign file, or a
    Hub that cannot be reached.
    """
    if str(path).startswith(HUB_PREFIX):
        repo_id, _, revision = str(path)[len(HUB_PREFIX) :].partition("@")
        path = snapshot(repo_id, revision=revision or None)
    path = Path(path).expanduser()
    if not path.exists():
        raise BitLMError(f"checkpoint not found: {path}")
    if (path / DISTRIBUTED_METADATA).is_file():
        model = _read_distributed_checkpoint(path)
    elif path.is_dir():
        model = read_folder(path)
    else:
        config, state = _read_lightning_checkpoint(path)
        model = _with_state(build_model(config), state, path)
    return model.to(map_location).eval()


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
        from bitlm.format.quantize import quantize

        quantize(model, scheme)  # the layers the saved quantized weights belong to
    try:
        if scheme is None:
            state = load_file(weights_file)
        else:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and OS errors all mean "unreadable"
        raise BitLMError(f"could not read model folder {path}: {_reason(err)}") from err
    return _with_state(model, state, path, assign=scheme is not None, strict=strict)


def read_config(path: str | Path) -> dict[str, Any]:
    """The content of an exported folder's ``config.json`` (``config_json``), checked."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise BitLMError(f"{path} is not an exported bitlm model: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise BitLMError(f"could not read model folder {path}: {_reason(err)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise BitLMError(f"{config_file} is not a bitlm config (expected format {FORMAT!r})")
    return meta


def snapshot(model_id: str | Path, **download: Any) -> Path:
    """A local folder holding the model ``model_id``: itself when it is a folder, else the Hub
    repository ``owner/name`` downloaded (``huggingface_hub.snapshot_download`` with
    ``download``'s options: revision, cache, token) into the Hub cache."""
    if Path(model_id).expanduser().is_dir():
        return Path(model_id).expanduser()
    with hub_errors(f"download {model_id}"):
        return Path(
            huggingface_hub.snapshot_download(str(model_id), allow_patterns=HUB_FILES, **download)
        )


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload bitlm model",
) -> str:
    """Upload an exported model folder to the Hub repository ``repo_id`` (created if needed)
    in one commit, its model card naming the repository; returns the commit's URL.

    ``token``: default the ``HF_TOKEN`` environment variable (or a cached ``hf auth login``).
    ``BitLMError`` when the folder is no exported model or the Hub cannot be reached or refuses.
    """
    model = read_folder(folder)  # refuse to publish something that does not load
    meta = read_config(folder)
    token = token or os.environ.get("HF_TOKEN") or None
    with hub_errors(f"push {folder} to {repo_id}"), tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "model"
        shutil.copytree(folder, upload)
        model.generate_model_card(**model.card_kwargs(meta, repo_id)).save(upload / CARD_NAME)
        api = huggingface_hub.HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=upload, commit_message=commit_message
        )
        return str(commit)  # CommitInfo: the commit's URL


@contextlib.contextmanager
def hub_errors(action: str) -> Iterator[None]:
    """Turn a Hub failure inside the block (offline mode, no network, unknown repository, no
    access, a malformed repository id) into one ``BitLMError`` line saying what to do."""
    try:
        yield
    except Exception as err:
        if not _is_hub_failure(err):
            raise
        raise BitLMError(f"could not {action}: {_hub_reason(err)}") from err


def _is_hub_failure(err: Exception) -> bool:
    """Raised by huggingface_hub or its HTTP client, or a network error."""
    module = type(err).__module__.split(".")[0]
    return module in ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3") or isinstance(
        err, (ConnectionError, TimeoutError)
    )


def _hub_reason(err: Exception) -> str:
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set, so the Hugging Face Hub is not contacted (unset it)"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the Hub refused access ({status}): set HF_TOKEN to a token with write access"
    if isinstance(err, huggingface_hub.errors.RepositoryNotFoundError):
        return "no such repository on the Hub (or it is private: set HF_TOKEN)"
    if isinstance(err, ValueError):  # HFValidationError: a malformed repository id
        return f"{_reason(err)} (a repository id is owner/name)"
    if status is None:
        return (
            f"the Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached: "
            f"check the network ({_reason(err)})"
        )
    return _reason(err)


def stored_size(path: str | Path) -> int:
    """Bytes ``path`` takes on disk: the file, or every file below the folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def quantization_of(path: str | Path) -> str | None:
    """The ``bitlm.format.quantize`` scheme of an exported model folder; None for float weights (and
    for checkpoints, which are always float)."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("quantization")
    except (OSError, ValueError, AttributeError):
        return None


def _with_state(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
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
    model that loads must not answer NaN. Plain float tensors are checked; quantized weights
    (torchao tensor types) hold integers and scales written from finite floats."""
    for name, value in state.items():
        is_float = type(value) is torch.Tensor and value.is_floating_point()
        if is_float and not bool(value.isfinite().all()):
            raise BitLMError(
                f"{path}: weight {name} holds NaN or inf (a damaged file, or weights of a "
                "diverged run): load another checkpoint or export"
            )


def _names(keys: set[str], shown: int = 3) -> str:
    names = sorted(keys)
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a ``bitlm-train`` checkpoint (a ``.ckpt`` file, or the folder of a
    sharded one) was saved at, once it has been read whole and its weights found finite: what
    a resume checks before training, so that a truncated or damaged file is one line
    (``BitLMError``), not a traceback from deep inside Lightning."""
    path = Path(path)
    if (path / DISTRIBUTED_METADATA).is_file():
        _read_distributed_checkpoint(path)  # reads every shard, checks the weights
        meta = torch.load(path / LIGHTNING_METADATA, map_location="cpu", weights_only=True)
        return int(meta.get("global_step", 0))
    ckpt = _load_checkpoint_file(path)
    _, state = _model_state(ckpt, path)
    check_finite(state, path)
    return int(ckpt.get("global_step", 0))


def _read_lightning_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return _model_state(_load_checkpoint_file(path), path)


def _load_checkpoint_file(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip and OS errors all mean "corrupt or not a checkpoint"
        raise BitLMError(
            f"could not read checkpoint {path} (truncated or damaged?): {_reason(err)}"
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
