"""Models: the bit-native BitTransformerLM (flat trunk), HierarchicalBitLM (byte-rate trunk with an
in-frame bit decoder) and the byte-level baseline; ``build_model`` picks one from the config."""

from torch import nn

from bitlm.model.byte_baseline import ByteTransformerLM
from bitlm.model.config import ModelConfig
from bitlm.model.hierarchical import HierarchicalBitLM
from bitlm.model.transformer import BitTransformerLM

BitModel = BitTransformerLM | HierarchicalBitLM
"""The models that read and write bits: what generation and bit-level telemetry accept."""


def build_model(config: ModelConfig) -> nn.Module:
    """``ByteTransformerLM`` for ``unit="byte"``; for ``unit="bit"``, ``BitTransformerLM``
    (``trunk="flat"``) or ``HierarchicalBitLM`` (``trunk="hierarchical"``)."""
    if config.unit == "byte":
        return ByteTransformerLM(config)
    return HierarchicalBitLM(config) if config.trunk == "hierarchical" else BitTransformerLM(config)


__all__ = [
    "BitModel",
    "BitTransformerLM",
    "ByteTransformerLM",
    "HierarchicalBitLM",
    "ModelConfig",
    "build_model",
]
