"""Models: the bit-native BitTransformerLM and the byte-level baseline (``config.unit``)."""

from torch import nn

from bitlm.model.byte_baseline import ByteTransformerLM
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import BitTransformerLM


def build_model(config: ModelConfig) -> nn.Module:
    """``BitTransformerLM`` for ``unit="bit"``, ``ByteTransformerLM`` for ``unit="byte"``."""
    return ByteTransformerLM(config) if config.unit == "byte" else BitTransformerLM(config)


__all__ = ["BitTransformerLM", "ByteTransformerLM", "ModelConfig", "build_model"]
