"""Multi-head self-attention over bit positions, always through ``F.scaled_dot_product_attention``.

Causal (next-bit language modelling) or bidirectional (diffusion denoising), with rotary position
embeddings, an optional key/value cache for generation, and optional query chunking that bounds
the score matrix to ``chunk × keys`` for long inputs while giving exactly the same output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitlm.model.config import ModelConfig


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each feature pair (i, i + d/2) of q and k by the angle ``pos · base^(-2i/d)``.

    Attention scores then depend only on relative position, so a model can be run (and later
    fine-tuned) on contexts longer than it was trained on. Position interpolation (``scale`` k):
    angles use ``pos / k``, so k times the context spans the angles the model was trained on.
    """

    def __init__(self, head_dim: int, base: float, scale: float = 1.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq / scale, persistent=False)

    def forward(self, start: int | Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Tables (cos θ, ±sin θ) for positions start … start+length-1: (length, head_dim) each
        for an int ``start``; (B, 1, length, head_dim) for a (B,) tensor of per-row starts (rows
        decoded together at different positions). ``[cos, cos]`` and ``[−sin, sin]`` over the
        two halves of a head (what ``apply_rotary`` multiplies by)."""
        offsets = torch.arange(length, device=self.inv_freq.device)
        if isinstance(start, Tensor):
            positions = start.to(offsets.device)[:, None] + offsets  # (B, T)
        else:
            positions = offsets + start  # (T,)
        angles = positions[..., None].float() * self.inv_freq  # (…, T, D/2)
        cos, sin = angles.cos(), angles.sin()
        tables = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return tables if positions.dim() == 1 else (tables[0][:, None], tables[1][:, None])


def apply_rotary(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate x (B, H, T, D) by the tables of ``RotaryEmbedding`` (half-split pairs)::

        out = x·[cos, cos] + [−x₂, x₁]·[sin, sin] = x·[cos, cos] + roll(x, D/2)·[−sin, sin]

    With the sign in the table the rotated copy is one ``roll`` rather than a split, a negation
    and a concatenation (fewer passes over q and k, forward and backward); the result is
    bit-identical, since (−a)·b = a·(−b) exactly in floating point."""
    cos, signed_sin = rope
    return (x * cos + x.roll(x.size(-1) // 2, dims=-1) * signed_sin).to(x.dtype)


class KVCache:
    """Keys and values of one attention layer for the positions decoded so far, per row.

    Pre-allocated to ``max_len`` positions so a decoding step writes in place instead of
    concatenating (which would copy the whole cache at every bit). Rows decoded together may
    hold contexts of different lengths (``lengths``): a step then writes each row's new key at
    its own position and masks the keys past it. Rows can be dropped (``keep``), joined
    (``extend``) and replaced (``put``), which is how sequences enter and leave a running batch.
    """

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device) -> None:
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (B, H, max_len, D)
        self.values = torch.zeros_like(self.keys)
        self.lengths = [0] * shape[0]

    @property
    def length(self) -> int:
        """The positions held by the longest row."""
        return max(self.lengths, default=0)

    @property
    def capacity(self) -> int:
        return self.keys.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[int, Tensor, Tensor, Tensor | None]:
        """Store k, v (B, H, T, D) after each row's cached positions. Returns ``(offset, keys,
        values, mask)``: when every row holds the same ``offset`` positions, all keys and values
        so far and no mask (the queries' causal mask follows from the offset); otherwise (one
        new position per row, T = 1) the keys up to the longest row and the (B, 1, 1, K) mask of
        the keys each row may see."""
        offset = self.lengths[0] if self.lengths else 0
        if all(n == offset for n in self.lengths):
            end = self._check(offset + k.size(2))
            self.keys[:, :, offset:end] = k
            self.values[:, :, offset:end] = v
            self.lengths = [end] * len(self.lengths)
            return offset, self.keys[:, :, :end], self.values[:, :, :end], None
        if k.size(2) != 1:
            raise RuntimeError("rows at different positions take one new position per step")
        end = self._check(self.length + 1)
        at = torch.tensor(self.lengths, device=k.device)
        rows = torch.arange(k.size(0), device=k.device)
        self.keys[rows, :, at] = k[:, :, 0]
        self.values[rows, :, at] = v[:, :, 0]
        self.lengths = [n + 1 for n in self.lengths]
        mask = torch.arange(end, device=k.device) <= at[:, None]  # (B, K)
        return 0, self.keys[:, :, :end], self.values[:, :, :end], mask[:, None, None]

    def _check(self, end: int) -> int:
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        return end

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows``, in that order."""
        index = torch.tensor(rows, dtype=torch.long, device=self.keys.device)
        self.keys, self.values = self.keys[index], self.values[index]
        self.lengths = [self.lengths[r] for r in rows]

    def extend(self, other: KVCache) -> None:
        """Append the rows of ``other`` (same layer shape) after this cache's."""
        self.keys = torch.cat((self.keys, other.keys))
        self.values = torch.cat((self.values, other.values))
        self.lengths = self.lengths + other.lengths

    def put(self, row: int, other: KVCache) -> None:
        """Replace row ``row`` by the single row of ``other``."""
        self.keys[row], self.values[row] = other.keys[0], other.values[0]
        self.lengths[row] = other.lengths[0]


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.chunk_size = config.attn_chunk_size
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # a list to append each forward's attention weights (B, H, T, K) to, or None: set by
        # ``capture_internals`` (the weights are computed explicitly then, which SDPA avoids)
        self.record: list[Tensor] | None = None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        causal: bool = True,
        cache: KVCache | None = None,
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)  # (B, H, T, D)
        offset, mask = 0, None
        if cache is not None:
            offset, k, v, mask = cache.append(k, v)
        if mask is not None:  # rows at their own positions, one query each: the mask says all
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = self._attend(q, k, v, causal, offset)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, offset: int) -> Tensor:
        """Attention of queries at absolute positions offset … offset+T-1 over keys 0 … K-1.

        Queries are processed ``chunk_size`` at a time; under causal masking a chunk only needs
        the keys up to its last query, so the work and memory per chunk are chunk × (offset+end).
        """
        T = q.size(2)
        if self.record is not None:
            return self._attend_recorded(q, k, v, causal, offset)
        chunk = self.chunk_size or T
        dropout_p = self.dropout if self.training else 0.0
        outputs = []
        for start in range(0, T, chunk):
            end = min(start + chunk, T)
            n_keys = offset + end if causal else k.size(2)
            mask = _causal_mask(offset + start, end - start, n_keys, q.device) if causal else None
            outputs.append(
                F.scaled_dot_product_attention(
                    q[:, :, start:end],
                    k[:, :, :n_keys],
                    v[:, :, :n_keys],
                    attn_mask=None if mask is True else mask,
                    is_causal=mask is True,
                    dropout_p=dropout_p,
                )
            )
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _attend_recorded(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool, offset: int
    ) -> Tensor:
        """``softmax(q kᵀ / √D) v`` written out, keeping the weights (no dropout: telemetry is
        taken in eval mode)."""
        scores = (q @ k.transpose(-2, -1)).float() / q.size(-1) ** 0.5  # (B, H, T, K)
        if causal:
            mask = _causal_mask(offset, q.size(2), k.size(2), q.device)
            if mask is True:
                mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        self.record.append(weights.detach())
        return weights.to(v.dtype) @ v


def _causal_mask(first_query: int, n_queries: int, n_keys: int, device) -> Tensor | bool | None:
    """Boolean mask (n_queries, n_keys), True where query ``first_query + i`` may see key j ≤ it.

    Returns ``True`` when the mask is the plain square lower triangle (SDPA's fused ``is_causal``
    path) and ``None`` when every query sees every key (a single query at the end of the cache).
    """
    if first_query == 0 and n_queries == n_keys:
        return True
    if first_query + n_queries == n_keys and n_queries == 1:
        return None
    query_pos = torch.arange(first_query, first_query + n_queries, device=device)
    return torch.arange(n_keys, device=device) <= query_pos[:, None]
