"""``load_model``: one entry point for every form a model comes in, so that every command takes
any of them wherever it takes a model."""

from __future__ import annotations

from pathlib import Path

import torch

from bitlm.core.errors import BitLMError
from bitlm.io.checkpoint import is_sharded, read_checkpoint
from bitlm.io.folder import read_folder
from bitlm.io.hub import HUB_PREFIX, hub_folder


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model (bit or byte-level, per its config) from an exported folder (quantized or
    not), a Hub repository ``hf://owner/name[@revision]``, or a ``bitlm-train`` Lightning
    checkpoint: a ``.ckpt`` file, or the ``.ckpt`` folder of sharded state that
    ``trainer=fsdp`` writes (read whole into this one process). Loading is strict.

    Raises ``BitLMError`` with a one-line reason for a missing, unreadable or foreign file, or a
    Hub that cannot be reached.
    """
    if str(path).startswith(HUB_PREFIX):
        path = hub_folder(str(path))
    path = Path(path).expanduser()
    if not path.exists():
        raise BitLMError(f"checkpoint not found: {path}")
    folder = path.is_dir() and not is_sharded(path)
    model = read_folder(path) if folder else read_checkpoint(path)
    return model.to(map_location).eval()
