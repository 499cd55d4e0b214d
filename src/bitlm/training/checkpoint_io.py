"""Checkpoint files that a kill, a crash or a NaN cannot spoil."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bitlm.core.errors import BitLMError
from bitlm.core.files import atomic_writer
from bitlm.io import nonfinite_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes every checkpoint through
    ``bitlm.core.files.atomic_writer``: ``torch.save`` streams into a temporary file beside the
    target, which is fsynced and then renamed onto it. A process killed at any moment
    (``kill -9`` included) or a machine that loses power leaves the previous checkpoint whole; a
    reader never sees a partial file.

    A checkpoint whose weights hold NaN or inf (``bitlm.io.nonfinite_weights``, the check every
    load makes) is refused (nothing is written): the file on disk stays the last good one.
    ``BitLMModule`` never lets non-finite gradients reach the weights, so this only fires on a
    fault elsewhere.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        bad = nonfinite_weights(checkpoint.get("state_dict", {}))
        if bad:
            raise BitLMError(
                f"refusing to write checkpoint {path}: weights {', '.join(bad[:3])} hold NaN or "
                "inf; the previous checkpoint is left as it was"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as handle:
            torch.save(checkpoint, handle)
