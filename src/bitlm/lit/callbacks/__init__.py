"""Lightning callbacks, one per file."""

from bitlm.lit.callbacks.model_export import ModelExport

__all__ = ["ModelExport"]
