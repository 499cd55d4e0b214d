"""Lightning callbacks, one per file."""

from bitlm.lit.callbacks.last_checkpoint import BestCheckpoint, LastCheckpoint
from bitlm.lit.callbacks.model_export import ModelExport
from bitlm.lit.callbacks.preemption import Preemption

__all__ = ["BestCheckpoint", "LastCheckpoint", "ModelExport", "Preemption"]
