"""Lightning callbacks, one per file."""

from bitlm.training.callbacks.last_checkpoint import BestCheckpoint, LastCheckpoint
from bitlm.training.callbacks.model_export import ModelExport
from bitlm.training.callbacks.preemption import Preemption

__all__ = ["BestCheckpoint", "LastCheckpoint", "ModelExport", "Preemption"]
