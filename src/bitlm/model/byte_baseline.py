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

from bitlm.bits import frame_values
from bitlm.model.attention import RotaryEmbedding
from bitlm.model.config import ModelConfig
from bitlm.model.transformer import init_weights, make_trunk
from bitlm.objective import byte_cross_entropy

START = 256
"""Input symbol before the first byte of a window."""


class ByteTransformerLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.byte_embedding = nn.Embedding(257, config.d_model)  # 256 byte values + START
        self.embed_dropout = nn.Dropout(config.dropout)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_base)
        self.trunk = make_trunk(config)
        self.norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.head = nn.Linear(config.d_model, 256, bias=config.bias)
        init_weights(self, config.n_layers)

    def forward(self, bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, n, 256) for bits (B, 9n): ``logits[:, i]`` predicts byte i from bytes < i."""
        values = frame_values(bits).long()  # (B, n)
        if values.size(1) > self.config.max_bytes:
            raise ValueError(
                f"{values.size(1)} bytes exceed the context of {self.config.max_bytes}"
            )
        start = torch.full_like(values[:, :1], START)
        symbols = torch.cat((start, values[:, :-1]), dim=1)
        x = self.embed_dropout(self.byte_embedding(symbols))  # (B, n, C)
        h = self.trunk(x, self.rope(0, values.size(1)), True)  # (B, n, C)
        return self.head(self.norm(h)), {}

    def score(self, bits: Tensor, include_parity: bool = False) -> tuple[Tensor, Tensor]:
        """``(training loss, CE in bits of each byte (B, n))``; there are no parity targets."""
        logits, _ = self(bits)
        return byte_cross_entropy(logits, frame_values(bits))
