"""Lightning callbacks, one per file."""

from bitlm.lit.callbacks.last_checkpoint import LastCheckpoint
from bitlm.lit.callbacks.model_export import ModelExport

__all__ = ["LastCheckpoint", "ModelExport"]
