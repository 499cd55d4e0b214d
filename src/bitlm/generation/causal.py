"""Autoregressive bit sampling (with a key/value cache by default), parity-aware so that output
always decodes.

Each new byte is 8 data bits, which are sampled, and one parity bit, which is *computed* (XOR of
the 8 data bits) and never sampled. Every emitted frame therefore has even parity by
construction, whatever the model believes. The flat trunk pays 9 single-position passes of its
stack per byte; the hierarchical trunk one pass of its global stack and 8 of its in-frame decoder.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bitlm.core.bits import DATA_BITS, FRAME_BITS, bytes_to_bits, decode_bits
from bitlm.core.errors import check_deadline
from bitlm.generation.options import GenerationOptions
from bitlm.model import BitModel
from bitlm.model.attention import KVCache
from bitlm.model.hierarchical import HierarchicalBitLM, parity_logits
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


def _recent_frames(context: Tensor, limit: int, keep: int) -> Tensor:
    """``context`` (B, bits) if it holds at most ``limit`` bits, else its last whole frames,
    at most ``keep`` bits of them: the window a full cache is refilled with."""
    if context.size(1) <= limit:
        return context
    excess = context.size(1) - keep
    return context[:, -(-excess // FRAME_BITS) * FRAME_BITS :]


class _BitDecoder:
    """Flat trunk: feeds one bit at a time through the model, keeping the KV cache and the window.

    When the cache is full, the oldest whole frames are dropped until half the window is left and
    the rest is re-encoded behind a fresh START symbol, exactly as the training windows look.
    Without the cache (``kv_cache=False``, the reference the cache is benchmarked against) every
    bit re-encodes the whole context: the same windows, so the same text up to float rounding.
    """

    def __init__(self, model: BitTransformerLM, context: Tensor, kv_cache: bool = True) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_len = model.config.max_seq_len
        self.context = context  # (B, n) bits seen so far, starting on a frame boundary
        self._refill()

    def _refill(self) -> None:
        self.context = _recent_frames(self.context, self.max_len - 1, self.max_len // 2)
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


class _FrameDecoder:
    """Hierarchical trunk: one global step per frame, key/value-cached at frame level; for each
    data bit the in-frame decoder re-reads the frame's bits so far (at most 8 positions, too few
    to be worth a cache). The window policy is ``_BitDecoder``'s, counted in frames; without the
    cache every frame re-encodes the whole context."""

    def __init__(self, model: HierarchicalBitLM, context: Tensor, kv_cache: bool = True) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_frames = model.config.max_bytes
        self.context = context  # (B, 9m) bits seen so far, whole frames
        self._refill()

    def _refill(self) -> None:
        limit, keep = (self.max_frames - 1) * FRAME_BITS, self.max_frames // 2 * FRAME_BITS
        self.context = _recent_frames(self.context, limit, keep)
        B = self.context.size(0)
        self.caches: list[KVCache] | None = self.model.new_caches(B) if self.kv_cache else None
        start = torch.full((B, 1, FRAME_BITS), MASK, device=self.context.device)
        frames = torch.cat((start, self.context.long().view(B, -1, FRAME_BITS)), dim=1)
        self._start_frame(self.model.frame_contexts(frames, caches=self.caches)[:, -1])

    def _start_frame(self, frame_context: Tensor) -> None:
        """Begin a new frame conditioned on its context from the global trunk (B, context_size)."""
        self.frame_context = frame_context
        self.symbols = torch.full((frame_context.size(0), 1), MASK, device=frame_context.device)
        self.logits = self.model.local(self.frame_context, self.symbols)[:, -1]  # (B, 2)

    def feed(self, bit: Tensor) -> None:
        """Append bit (B,) to the context and compute the logits of the bit after it."""
        self.context = torch.cat((self.context, bit[:, None].to(self.context.dtype)), dim=1)
        if self.symbols.size(1) <= DATA_BITS:  # a data bit
            self.symbols = torch.cat((self.symbols, bit[:, None].long()), dim=1)
            data = self.symbols[:, 1:]
            if data.size(1) == DATA_BITS:  # the parity bit comes next: computed, not predicted
                self.logits = parity_logits(data)[:, 0]
            else:
                self.logits = self.model.local(self.frame_context, self.symbols)[:, -1]
            return
        position = self.caches[0].length if self.caches is not None else self.max_frames
        if position >= self.max_frames:
            self._refill()
        else:
            last = self.context[:, -FRAME_BITS:].long()[:, None]  # (B, 1, 9)
            self._start_frame(
                self.model.frame_contexts(last, start=position, caches=self.caches)[:, -1]
            )


def _decoder(model: BitModel, context: Tensor, kv_cache: bool) -> _BitDecoder | _FrameDecoder:
    if isinstance(model, HierarchicalBitLM):
        return _FrameDecoder(model, context, kv_cache)
    return _BitDecoder(model, context, kv_cache)


@torch.no_grad()
def generate_bits(
    model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions | None = None
) -> Tensor:
    """Continue ``prompt`` by up to ``max_new_bytes`` frames; returns the new bits (9·n,) uint8.

    Stops early once the decoded output ends with ``options.stop`` (whose frames are then
    dropped). An empty prompt starts from the START symbol alone. ``kv_cache=False`` recomputes
    the whole context for every bit (slow; the reference for ``bitlm-bench generate``). The
    ``deadline`` is checked once per byte.
    """
    options = options or GenerationOptions()
    frames: list[Tensor] = []
    text = bytearray()
    with evaluating(model):
        device = model.head.weight.device
        generator = options.generator(device)
        context = bytes_to_bits(prompt).to(device)[None]  # (1, 9·len)
        decoder = _decoder(model, context, options.kv_cache)
        for _ in range(max_new_bytes):
            check_deadline(options.deadline)
            frames.append(_next_frame(decoder, options.temperature, options.top_p, generator))
            text += decode_bits(frames[-1], errors="repair")[0]
            if options.stop and text.endswith(options.stop):
                del frames[len(frames) - len(options.stop) :]
                break
    return torch.cat(frames) if frames else torch.zeros(0, dtype=torch.uint8)


def _next_frame(
    decoder: _BitDecoder | _FrameDecoder, temperature: float, top_p: float, generator
) -> Tensor:
    """Sample 8 data bits, feed the computed parity bit, return the frame (9,) on the CPU."""
    data = []
    for _ in range(DATA_BITS):
        bit = sample_bit(decoder.logits, temperature, top_p, generator)
        decoder.feed(bit)
        data.append(bit)
    parity = torch.stack(data).sum(0) % 2  # even parity: XOR of the data bits
    decoder.feed(parity)
    return torch.stack([*data, parity], dim=1)[0].to(torch.uint8).cpu()
