"""Lightning callbacks, one per file."""

from bitlm.lit.callbacks.last_checkpoint import BestCheckpoint, LastCheckpoint
from bitlm.lit.callbacks.model_export import ModelExport

__all__ = ["BestCheckpoint", "LastCheckpoint", "ModelExport"]
