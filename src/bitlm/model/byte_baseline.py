"""ByteTransformerLM: the byte-level baseline the bit model is measured against.

A standard decoder over bytes: embedding of the previous byte → the same trunk (width, depth,
heads, RoPE, reversible or plain) → 256-way softmax for the next byte. It reads the very same
bit windows as the bit model, decoding each frame to its byte, so data, optimiser, training loop
and evaluation are shared and a comparison isolates one thing: predicting 9 bits per byte with
2-way heads versus one byte with a 256-way head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bitlm.core.bits import frame_values
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import TransformerLM

START = 256
"""Input symbol before the first byte of a window."""


class ByteTransformerLM(TransformerLM):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.byte_embedding = nn.Embedding(257, config.d_model)  # 256 byte values + START
        self._build_trunk_and_head(config, n_outputs=256)

    def forward(self, bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, n, 256) for bits (B, 9n): ``logits[:, i]`` predicts byte i from bytes < i."""
        return self._logits(frame_values(bits).long()), self.trunk_telemetry()

    def _logits(self, values: Tensor) -> Tensor:
        n = values.size(1)
        if n > self.config.max_bytes:
            raise ValueError(f"{n} bytes exceed the context of {self.config.max_bytes}")
        start = torch.full_like(values[:, :1], START)
        symbols = torch.cat((start, values[:, :-1]), dim=1)  # (B, n)
        return self._trunk_and_head(self.byte_embedding(symbols), 0, causal=True)  # (B, n, 256)
