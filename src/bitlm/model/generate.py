"""Autoregressive bit sampling (with a key/value cache by default), parity-aware so that output
always decodes.

Each new byte costs 9 single-position forward passes: 8 for the data bits, which are sampled, and
one to feed the parity bit, which is *computed* (XOR of the 8 data bits) and never sampled. Every
emitted frame therefore has even parity by construction, whatever the model believes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitlm.bits import DATA_BITS, FRAME_BITS, bits_to_bytes, bytes_to_bits, decode_bits
from bitlm.model.attention import KVCache
from bitlm.model.transformer import MASK, BitTransformerLM, evaluating


def sample_bit(
    logits: Tensor, temperature: float = 1.0, top_p: float = 1.0, generator=None
) -> Tensor:
    """Draw bits (B,) from logits (B, 2).

    ``temperature == 0`` is greedy. Top-p over two outcomes: when the likelier bit alone holds at
    least ``top_p`` of the mass it is taken, otherwise both stay in play and one is sampled.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, 2)
    confident = probs.max(-1).values >= top_p
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(confident, probs.argmax(-1), sampled)


class _Decoder:
    """Feeds one symbol at a time through the model, keeping the KV cache and the context window.

    When the cache is full, the oldest whole frames are dropped until half the window is left and
    the rest is re-encoded behind a fresh START symbol, exactly as the training windows look.
    Without the cache (``kv_cache=False``, the reference the cache is benchmarked against) every
    bit re-encodes the whole context: the same windows, so the same text up to float rounding.
    """

    def __init__(self, model: BitTransformerLM, context: Tensor, kv_cache: bool = True) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_len = model.config.max_seq_len
        self.keep = self.max_len // 2
        self.context = context  # (B, n) bits seen so far, starting on a frame boundary
        self._refill()

    def _refill(self) -> None:
        if self.context.size(1) > self.max_len - 1:
            excess = self.context.size(1) - self.keep
            self.context = self.context[:, -(-excess // FRAME_BITS) * FRAME_BITS :]
        start = torch.full((self.context.size(0), 1), MASK, device=self.context.device)
        self.caches: list[KVCache] | None = (
            self.model.new_caches(self.context.size(0)) if self.kv_cache else None
        )
        symbols = torch.cat((start, self.context), dim=1).long()
        self.logits = self.model.predict(symbols, caches=self.caches)[:, -1]  # (B, 2)

    def feed(self, bit: Tensor) -> None:
        """Append bit (B,) to the context and compute the logits of the bit after it."""
        self.context = torch.cat((self.context, bit[:, None].to(self.context.dtype)), dim=1)
        position = self.caches[0].length if self.caches is not None else self.max_len
        if position >= self.max_len:
            self._refill()
        else:
            symbols = bit[:, None].long()
            self.logits = self.model.predict(symbols, start=position, caches=self.caches)[:, -1]


@torch.no_grad()
def generate_bits(
    model: BitTransformerLM,
    prompt: bytes,
    max_new_bytes: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: bytes | None = None,
    generator: torch.Generator | None = None,
    kv_cache: bool = True,
) -> Tensor:
    """Continue ``prompt`` by up to ``max_new_bytes`` frames; returns the new bits (9·n,) uint8.

    Stops early once the decoded output ends with ``stop`` (whose frames are then dropped). An
    empty prompt starts from the START symbol alone. ``kv_cache=False`` recomputes the whole
    context for every bit (slow; the reference for ``bitlm-bench generate``).
    """
    frames: list[Tensor] = []
    text = bytearray()
    with evaluating(model):
        device = model.head.weight.device
        decoder = _Decoder(model, bytes_to_bits(prompt).to(device)[None], kv_cache)  # (1, 9·len)
        for _ in range(max_new_bytes):
            frames.append(_next_frame(decoder, temperature, top_p, generator))
            text += decode_bits(frames[-1], errors="repair")[0]
            if stop and text.endswith(stop):
                del frames[len(frames) - len(stop) :]
                break
    return torch.cat(frames) if frames else torch.zeros(0, dtype=torch.uint8)


def generate(model: BitTransformerLM, prompt: bytes, max_new_bytes: int, **kwargs) -> bytes:
    """``generate_bits`` decoded to bytes (strictly: a parity failure would raise)."""
    return bits_to_bytes(generate_bits(model, prompt, max_new_bytes, **kwargs))


def _next_frame(decoder: _Decoder, temperature: float, top_p: float, generator) -> Tensor:
    """Sample 8 data bits, feed the computed parity bit, return the frame (9,) on the CPU."""
    data = []
    for _ in range(DATA_BITS):
        bit = sample_bit(decoder.logits, temperature, top_p, generator)
        decoder.feed(bit)
        data.append(bit)
    parity = torch.stack(data).sum(0) % 2  # even parity: XOR of the data bits
    decoder.feed(parity)
    return torch.stack([*data, parity], dim=1)[0].to(torch.uint8).cpu()
