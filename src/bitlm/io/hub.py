"""The Hugging Face Hub: downloading a model (``hf://owner/name[@revision]`` wherever a model
path is taken), uploading an exported folder (``push_to_hub``, token from ``HF_TOKEN``), and
Hub failures as one ``BitLMError`` line saying what to do (offline mode, no network, unknown
repository, no access, a malformed repository id)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub

from bitlm.core.errors import BitLMError
from bitlm.io.card import CARD_NAME, write_card
from bitlm.io.folder import (
    CONFIG_NAME,
    QUANTIZED_WEIGHTS_NAME,
    WEIGHTS_NAME,
    read_config,
    read_folder,
)
from bitlm.io.weights import reason

HUB_PREFIX = "hf://"
# what a download takes from a repository: the model, its card, a distilled model's metrics
HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, QUANTIZED_WEIGHTS_NAME, CARD_NAME, "*.json"]


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


def hub_folder(uri: str) -> Path:
    """The local folder of ``hf://owner/name[@revision]``, downloaded (``snapshot``)."""
    repo_id, _, revision = uri[len(HUB_PREFIX) :].partition("@")
    return snapshot(repo_id, revision=revision or None)


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
        write_card(model, meta, upload, repo_id)
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
        return f"{reason(err)} (a repository id is owner/name)"
    if status is None:
        return (
            f"the Hugging Face Hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached: "
            f"check the network ({reason(err)})"
        )
    return reason(err)
