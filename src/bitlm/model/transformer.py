"""BitTransformerLM: a transformer that reads and predicts raw bits in 9-bit parity frames.

Pipeline, for bits (B, L) with L a multiple of 9::

    symbols (B, L)   causal: [START, b0 … b_{L-2}] (shifted right), diffusion: the noisy bits
      → embedding    E_bit[symbol] + E_frame[t mod 9]        symbols are 0, 1 or MASK (= START)
      → trunk        n_layers blocks, reversible or plain, RoPE attention
      → head         LayerNorm → Linear(d_model, 2)
    logits (B, L, 2)  logits[:, t] is the prediction for bit t

The frame embedding tells every position which bit of its byte it predicts (data bit 0–7 or the
parity bit), which a flat bit stream could otherwise only infer from counting.

This is the flat trunk (``trunk=flat``): nine positions of the stack per byte. The hierarchical
trunk (``model/hierarchical.py``) shares ``TransformerLM`` and runs the stack once per byte.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bitlm.core.bits import FRAME_BITS
from bitlm.core.errors import BitLMError
from bitlm.core.rle import CompressedBits, decompress_bits
from bitlm.model.attention import KVCache, RotaryEmbedding
from bitlm.model.blocks import PlainStack, ReversibleStack
from bitlm.model.config import ModelConfig

MASK = 2
"""Input symbol for "no bit here": the start-of-context input in causal mode, the masked
position in diffusion mode."""


class TransformerLM(nn.Module):
    """What the bit model and the byte-level baseline share after their own input embeddings:
    dropout → RoPE trunk (reversible or plain) → LayerNorm → linear head. A subclass builds its
    embeddings, then calls ``_build_trunk_and_head`` (which also initialises all weights)."""

    def _build_trunk_and_head(self, config: ModelConfig, n_outputs: int) -> None:
        self.config = config
        self.embed_dropout = nn.Dropout(config.dropout)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_base, config.rope_scale)
        self.trunk = make_trunk(config)
        self.norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.head = nn.Linear(config.d_model, n_outputs, bias=config.bias)
        init_weights(self, config.n_layers)
        if self.trunk.halting is not None:
            self.trunk.halting.reset_parameters()

    def _trunk_and_head(
        self, x: Tensor, start: int | Tensor, causal: bool, caches: list[KVCache] | None = None
    ) -> Tensor:
        """Logits (B, T, n_outputs) for embedded inputs x (B, T, C) at positions start … (an
        int, or a (B,) tensor: each row's own first position, when rows decoded together hold
        contexts of different lengths)."""
        h = self.trunk(self.embed_dropout(x), self.rope(start, x.size(1)), causal, caches)
        return self.head(self.norm(h))

    def _own_mode(self, causal: bool | None) -> bool:
        """Whether a forward pass is causal: the model's own ``model.mode``. Asking for the other
        mode is an error: the model was trained for one (the hierarchical one has no head for
        the other), and its predictions in the other would be meaningless."""
        own = self.config.mode == "causal"
        if causal is not None and causal != own:
            raise BitLMError(
                f"this model was built with model.mode={self.config.mode} and predicts "
                f"{'causally' if own else 'bidirectionally'} only"
            )
        return own

    def trunk_telemetry(self) -> dict[str, Tensor]:
        """What the trunk recorded in its last forward, handed out once (the module keeps no
        reference to it): halting (``halt_probs``, ``ponder_cost``, ``layers_run``;
        model/act.py) when ``use_act``, else nothing."""
        halting = self.trunk.halting
        if halting is None:
            return {}
        record, halting.last = halting.last, {}
        return record

    def forward_compressed(
        self, compressed: CompressedBits, **kwargs: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``forward`` of the bits ``compress_bits`` coded (``bitlm.core.rle``), decoded on
        the model's device: the same result as ``forward`` on the raw bits, by construction."""
        bits = decompress_bits(compressed).to(self.head.weight.device)
        return self(bits, **kwargs)

    def new_caches(self, batch_size: int) -> list[KVCache]:
        """Empty key/value caches for the trunk, one per layer, for its whole window
        (``config.trunk_positions``)."""
        c = self.config
        ref = self.head.weight
        shape = (batch_size, c.n_heads, c.trunk_positions, c.head_dim)
        return [KVCache(shape, ref.dtype, ref.device) for _ in range(c.n_layers)]


class BitTransformerLM(TransformerLM):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.bit_embedding = nn.Embedding(3, config.d_model)  # 0, 1, MASK
        self.frame_embedding = nn.Embedding(FRAME_BITS, config.d_model)
        self._build_trunk_and_head(config, n_outputs=2)

    def forward(
        self, bits: Tensor, *, causal: bool | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits (B, L, 2) for bits (B, L), and a telemetry dict.

        ``model.mode=causal``: ``logits[:, t]`` predicts ``bits[:, t]`` from ``bits[:, :t]`` (the
        input is shifted right behind a START symbol, so every bit of the window, the first
        included, is predicted). ``model.mode=diffusion``: ``bits`` may hold MASK symbols and
        ``logits[:, t]`` predicts the clean bit t from the whole sequence. ``causal`` may only
        confirm the model's mode (``_own_mode``).
        Telemetry: the trunk's halting record when ``use_act`` (``trunk_telemetry``).
        """
        causal = self._own_mode(causal)
        symbols = shift_right(bits) if causal else bits
        return self.predict(symbols.long(), causal=causal), self.trunk_telemetry()

    def predict(
        self,
        symbols: Tensor,
        *,
        start: int | Tensor = 0,
        causal: bool = True,
        caches: list[KVCache] | None = None,
    ) -> Tensor:
        """Logits (B, T, 2) for input symbols (B, T) at absolute positions start … start+T-1
        (per row for a (B,) tensor ``start``; the caches bound those positions)."""
        T = symbols.size(1)
        if isinstance(start, int) and start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} bits exceeds max_seq_len={self.config.max_seq_len}"
            )
        return self._trunk_and_head(self.embed(symbols, start), start, causal, caches)  # (B, T, 2)

    def embed(self, symbols: Tensor, start: int | Tensor = 0) -> Tensor:
        """E_bit[symbol] + E_frame[t mod 9], (B, T, C); t from ``start`` (an int or per row)."""
        first = start.to(symbols.device)[:, None] if isinstance(start, Tensor) else start
        frame_pos = (torch.arange(symbols.size(1), device=symbols.device) + first) % FRAME_BITS
        return self.bit_embedding(symbols) + self.frame_embedding(frame_pos)


@dataclass
class Internals:
    """What ``capture_internals`` recorded, per trunk layer, one entry per forward pass."""

    attention: list[list[Tensor]]  # [layer][pass] → weights (B, H, T, K)
    activations: list[list[Tensor]]  # [layer][pass] → residual stream read by the MLP (B, T, C)


@contextlib.contextmanager
def capture_internals(model: TransformerLM) -> Iterator[Internals]:
    """Record each trunk layer's attention weights and the residual stream its MLP branch reads
    during the forward passes run inside the block (heavy telemetry, only when asked: attention
    is then computed explicitly instead of through SDPA's fused kernel)."""
    blocks = model.trunk.blocks
    internals = Internals([[] for _ in blocks], [[] for _ in blocks])
    hooks = []
    for block, attention, activations in zip(
        blocks, internals.attention, internals.activations, strict=True
    ):
        block.f.attn.record = attention
        hooks.append(
            block.g.register_forward_pre_hook(
                lambda _module, args, sink=activations: sink.append(args[0].detach())
            )
        )
    try:
        yield internals
    finally:
        for block, hook in zip(blocks, hooks, strict=True):
            block.f.attn.record = None
            hook.remove()


def make_trunk(config: ModelConfig) -> nn.Module:
    return ReversibleStack(config) if config.reversible else PlainStack(config)


def init_weights(model: nn.Module, n_layers: int) -> None:
    """N(0, 0.02) for linear and embedding weights, zero biases; GPT-2 scaling for each residual
    branch's output projection (std / √(2·n_layers)) so the residual stream's variance stays
    O(1) at initialisation whatever the depth."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode (no dropout), restoring its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def shift_right(bits: Tensor) -> Tensor:
    """[b0 … b_{L-1}] → [MASK, b0 … b_{L-2}] along dim 1: the causal model's input for predicting
    every bit. On frames (B, n, 9) it shifts whole frames behind an all-MASK start frame."""
    start = torch.full_like(bits[:, :1], MASK)
    return torch.cat((start, bits[:, :-1]), dim=1)
