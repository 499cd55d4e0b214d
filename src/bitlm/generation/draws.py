"""The random part of causal sampling: the distribution a bit or a whole byte is drawn from, and
each sequence's own stream of uniform draws.

A bit is drawn from its tempered probabilities, or taken greedily (``bit_distribution``)::

    q = softmax(logits / T)          one-hot on the likelier bit when T = 0 or max(q) ≥ top_p

A byte of the tree decoder is drawn at once from the 256-way distribution those bits define
(``byte_distribution``): the node reached by the prefix b_0 … b_{j-1} gives bit j, so::

    p(b) = Π_j q_{node_j(b)}(b_j)          node_0 = 0,  node_j = 2·node_{j-1} + 1 + b_{j-1}

which is exactly the distribution of drawing the 8 bits one after another, each with its own
temperature and top-p (a test compares the two), in one vectorised step instead of eight.

Draws come from a uniform u in [0, 1) per decision: bit 1 iff u ≥ q(0); the byte whose
cumulative probability first exceeds u. Each sequence has its own generator (``RowRandom``,
seeded with its options' seed), so its text is the same whichever sequences it is decoded with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bitlm.core.bits import DATA_BITS, FRAME_TABLE


def bit_distribution(logits: Tensor, temperature: Tensor, top_p: Tensor) -> Tensor:
    """q (…, 2) for logits (…, 2), with ``temperature`` and ``top_p`` of shape (…) (or
    broadcastable to it): the tempered softmax, or the one-hot of the likelier bit when the
    temperature is 0 (greedy) or that bit alone holds at least ``top_p`` of the mass."""
    greedy = temperature == 0
    scale = torch.where(greedy, torch.ones_like(temperature), temperature)
    probs = torch.softmax(logits.float() / scale[..., None], dim=-1)
    likelier = F.one_hot(logits.argmax(-1), 2).to(probs.dtype)
    take = greedy | (probs.max(-1).values >= top_p)
    return torch.where(take[..., None], likelier, probs)


def _tree_paths() -> Tensor:
    """(256, 8): for byte b and depth j the index 2·node_j(b) + b_j of its bit's probability in
    the flattened (255 · 2) node table."""
    data = FRAME_TABLE[:, :DATA_BITS].long()  # (256, 8), MSB first
    nodes = torch.zeros_like(data)
    for j in range(1, DATA_BITS):
        nodes[:, j] = 2 * nodes[:, j - 1] + 1 + data[:, j - 1]
    return 2 * nodes + data


TREE_PATHS = _tree_paths()


def byte_distribution(node_logits: Tensor, temperature: Tensor, top_p: Tensor) -> Tensor:
    """p (N, 256) of each frame's byte from its tree decoder's node logits (N, 255 · 2), with
    per-row ``temperature`` and ``top_p`` (N,) applied to every bit (module docstring)."""
    N = node_logits.size(0)
    q = bit_distribution(node_logits.view(N, -1, 2), temperature[:, None], top_p[:, None])
    paths = TREE_PATHS.to(q.device)
    return q.flatten(1)[:, paths].prod(-1)


def draw_bits(q: Tensor, uniforms: Tensor) -> Tensor:
    """Bits (N,) drawn from q (N, 2) with uniforms (N,): 1 iff u ≥ q(0)."""
    return (uniforms.to(q.device) >= q[:, 0]).long()


def draw_bytes(p: Tensor, uniforms: Tensor) -> Tensor:
    """Bytes (N,) drawn from p (N, 256) with uniforms (N,) by the inverse of the cumulative
    distribution (never a byte of probability 0, whatever the rounding of the sum)."""
    cdf = p.cumsum(-1)
    target = uniforms.to(p.device) * cdf[:, -1]
    drawn = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
    last = (p > 0).long().cumsum(-1).argmax(-1)  # the last byte of positive probability
    return torch.minimum(drawn, last)


class RowRandom:
    """One sequence's uniform draws in [0, 1): a CPU generator seeded with ``seed``, read
    ``CHUNK`` values at a time (one call per 256 draws, not one per bit)."""

    CHUNK = 256

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0)

    def take(self, n: int) -> Tensor:
        """The next ``n`` draws (n,)."""
        if self.buffer.numel() < n:
            fresh = torch.rand(max(self.CHUNK, n), generator=self.generator)
            self.buffer = torch.cat((self.buffer, fresh))
        drawn, self.buffer = self.buffer[:n], self.buffer[n:]
        return drawn
