"""The order training windows are read in: a pure function of (seed, epoch, position).

Exact resume needs the batch of every step to be known without replaying the steps before it,
and corpora larger than memory rule out ``torch.randperm`` (a permutation of 10¹⁰ window starts
is 80 GB). So each epoch's order is a keyed bijection of ``[0, n)`` computed on demand:

**Permutation.** A balanced Feistel network on ``2h``-bit integers (``2^(2h) ≥ n``): split
``x = (L, R)`` into ``h``-bit halves and apply four rounds ``(L, R) ← (R, L ⊕ F_k(R))`` with a
64-bit mixing function ``F`` and round keys ``k`` drawn from ``(seed, epoch)``. Every round is
invertible, so the network permutes ``[0, 2^(2h))``; *cycle walking* (re-applying it while the
result is ``≥ n``) restricts it to a permutation of ``[0, n)``, in fewer than four rounds on
average because ``2^(2h) < 4n``. O(1) memory, vectorised over a batch of positions.

**Batches.** Global batch ``g`` (0, 1, 2, … across epochs; one optimiser step reads
``accumulate_grad_batches`` of them) is epoch ``e = g // m`` (``m`` batches per epoch), and holds
the windows at positions ``[(g mod m)·B·W, (g mod m + 1)·B·W)`` of that epoch's permutation,
``B`` windows per rank and ``W`` ranks, rank ``r`` taking the ``r``-th block of ``B``. So two
ranks with batch ``B`` read exactly the windows one process with batch ``2B`` reads, and a run
that resumes at step ``s`` starts at batch ``g = s · accumulate_grad_batches``: the batches
after a resume are the ones an uninterrupted run would have read. (Exact as long as every epoch
is a whole number of optimiser steps, i.e. ``accumulate_grad_batches`` divides the batches per
epoch, and ``limit_train_batches`` does not cut epochs short.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DistributedSampler

_ROUNDS = 4
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class EpochPermutation:
    """A pseudo-random bijection of ``[0, n)`` keyed by ``(seed, epoch)`` (module docstring)."""

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        if n < 1:
            raise ValueError(f"cannot permute {n} items")
        self.n = n
        self.half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
        keys = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch]).generate_state(
            _ROUNDS, np.uint64
        )
        self.keys = [np.uint64(k) for k in keys]

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The permuted values of ``positions`` (int64 array with values in ``[0, n)``)."""
        x = np.asarray(positions, dtype=np.uint64)
        out = self._feistel(x)
        outside = out >= self.n
        while outside.any():  # cycle walking: stays inside [0, n) since the walk is a cycle
            out[outside] = self._feistel(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half_bits)
        mask = np.uint64((1 << self.half_bits) - 1)
        left, right = x >> h, x & mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right ^ key) & mask)
        return (left << h) | right


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fast 64-bit hash with full avalanche."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK64
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK64
    return x ^ (x >> np.uint64(31))


class ResumableSampler(DistributedSampler):
    """Window indices for one rank, batch after batch, from global batch ``start_batch()`` on.

    ``start_batch`` is asked each time an epoch's iteration begins; the data module passes the
    number of batches the trainer has consumed (``global_step · accumulate_grad_batches``), so
    a resumed run continues where the checkpoint left off and later epochs start at their
    first batch. Only whole batches are drawn (the remainder of an epoch is never read).

    A ``DistributedSampler`` so that Lightning uses it as it is instead of wrapping it; the
    ``epoch`` Lightning sets is not used (the epoch follows from the batch count).
    """

    def __init__(
        self,
        n_windows: int,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        start_batch: Callable[[], int] | None = None,
    ) -> None:
        self.n_windows, self.batch_size, self.seed = n_windows, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.start_batch = start_batch or (lambda: 0)
        self.epoch, self.shuffle, self.drop_last = 0, True, True
        self.batches_per_epoch = n_windows // (batch_size * num_replicas)
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{n_windows} windows do not fill one batch of {batch_size} on "
                f"{num_replicas} rank(s)"
            )

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, first = divmod(self.start_batch(), self.batches_per_epoch)
        permutation = EpochPermutation(self.n_windows, self.seed, epoch)
        for index in range(first, self.batches_per_epoch):
            yield from permutation(self._positions(index)).tolist()

    def batch(self, global_batch: int) -> list[int]:
        """The window indices this rank reads in ``global_batch`` (for tests and tools)."""
        epoch, index = divmod(global_batch, self.batches_per_epoch)
        permutation = EpochPermutation(self.n_windows, self.seed, epoch)
        return permutation(self._positions(index)).tolist()

    def _positions(self, index: int) -> np.ndarray:
        """Permutation positions of this rank's block of batch ``index`` of an epoch."""
        start = (index * self.num_replicas + self.rank) * self.batch_size
        return np.arange(start, start + self.batch_size)
