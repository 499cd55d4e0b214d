"""K, C and S telemetry of bit sequences and of a model's predictions.

All three are in [0, 1], computed per sequence over the 8 data bits of each 9-bit frame (parity
bits are a function of their frame and carry no information, as in bpb). For bits (B, 9n) of 0/1
and next-bit logits (B, 9n, 2), p_t = P(bit_t = 1) from the logits:

* **K, negentropy** (1 = ordered).
  Of bits: ``K = 1 − H8/8``, H8 the Shannon entropy (bits) of the sequence's byte histogram.
  Of predictions: ``K = 1 − mean_t H2(p_t)``, H2 the binary entropy in bits.
* **C, LZ complexity** (higher = more changes).
  Of bits: ``C = c(N) · log2(N) / N`` clipped to [0, 1], c(N) the exact LZ76 phrase count of the
  N = 8n data bits (≈ 1 for coin flips, → 0 for constant input; ``lz76.py``).
  Of predictions (differentiable proxy): ``C = 2 · mean_t [p_t(1 − p_{t+1}) + (1 − p_t) p_{t+1}]``,
  twice the expected bit-flip rate between consecutive data bits, clipped to [0, 1].
* **S, symbiosis** (1 = aligned): ``S = mean_t exp(−KL(q_t ‖ p_t))``, KL in nats between the
  Bernoulli reference q_t and the prediction p_t. The reference is the corpus's P(bit = 1) at each
  frame position (``marginal_reference``) or a frozen reference model's predictions.

Plus the heavier views a telemetry callback asks for: attention entropy and activation statistics.
The ``Metric`` classes accumulate per-sequence means across batches and ranks (sum and count, both
reduced by summation, so a distributed mean weighs every sequence once).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from bitlm.core.bits import DATA_BITS, FRAME_BITS, FRAME_TABLE, frame_values
from bitlm.telemetry.lz76 import lz76_phrase_counts

EPS = 1e-6
"""Probability clamp for logs: keeps entropies and KL finite (and their gradients bounded)."""


def data_bits(x: Tensor) -> Tensor:
    """The data bits of each frame of x (B, 9n, ...) in sequence order, (B, 8n, ...)."""
    B, L = x.shape[:2]
    frames = x.reshape(B, L // FRAME_BITS, FRAME_BITS, *x.shape[2:])
    return frames[:, :, :DATA_BITS].flatten(1, 2)


def bit_probabilities(logits: Tensor) -> Tensor:
    """P(bit = 1) (B, L) from 2-way logits (B, L, 2), in float32."""
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def negentropy(bits: Tensor) -> Tensor:
    """K of each sequence of bits (B, 9n): ``1 − H8/8`` over its byte histogram, (B,)."""
    values = frame_values(bits).long()  # (B, n)
    counts = torch.zeros(values.size(0), 256, device=values.device)
    counts.scatter_add_(1, values, torch.ones_like(values, dtype=counts.dtype))
    p = counts / values.size(1)
    h8 = -(p * torch.log2(p.clamp(min=EPS))).sum(1)
    return 1.0 - h8 / DATA_BITS


def lz76_complexity(bits: Tensor) -> Tensor:
    """C of each sequence of bits (B, 9n): normalised LZ76 ``c(N)·log2(N)/N`` of its N data bits,
    clipped to [0, 1], (B,)."""
    data = data_bits(bits)
    n = data.size(1)
    if n < 2:
        return torch.zeros(data.size(0), device=bits.device)
    counts = lz76_phrase_counts(data).float()
    return (counts * math.log2(n) / n).clamp(0.0, 1.0)


def binary_entropy(p: Tensor) -> Tensor:
    """H2(p) in bits, elementwise."""
    p = p.clamp(EPS, 1 - EPS)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def prediction_negentropy(logits: Tensor) -> Tensor:
    """K of the predictions (B, 9n, 2): ``1 − mean_t H2(p_t)`` over data bits, (B,)."""
    return _negentropy_of(data_bits(bit_probabilities(logits)))


def _negentropy_of(p: Tensor) -> Tensor:
    return 1.0 - binary_entropy(p).mean(1)


def flip_rate_complexity(p: Tensor) -> Tensor:
    """``2 · mean_t [p_t(1 − p_{t+1}) + (1 − p_t)p_{t+1}]`` of P(bit = 1) over consecutive
    positions of p (B, N), clipped to [0, 1], (B,). On 0/1 bits it is twice their flip rate."""
    a, b = p[:, :-1], p[:, 1:]
    return (2 * (a * (1 - b) + (1 - a) * b).mean(1)).clamp(0.0, 1.0)


def prediction_complexity(logits: Tensor) -> Tensor:
    """C of the predictions (B, 9n, 2): the expected flip-rate proxy over data bits, (B,)."""
    return flip_rate_complexity(data_bits(bit_probabilities(logits)))


def bernoulli_kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(Bernoulli(q) ‖ Bernoulli(p)) in nats, elementwise."""
    q = q.clamp(EPS, 1 - EPS)
    p = p.clamp(EPS, 1 - EPS)
    return q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()


def symbiosis(logits: Tensor, reference: Tensor) -> Tensor:
    """S of the predictions (B, 9n, 2) against ``reference``: P(bit = 1) per frame position (9,)
    (``marginal_reference``) or per bit (B, 9n) (a reference model's predictions);
    ``mean_t exp(−KL(q_t ‖ p_t))`` over data bits, (B,)."""
    p = bit_probabilities(logits)
    return _symbiosis_of(data_bits(p), data_bits(_reference_like(reference, p)))


def _symbiosis_of(p: Tensor, q: Tensor) -> Tensor:
    return torch.exp(-bernoulli_kl(q, p)).mean(1)


def _reference_like(reference: Tensor, p: Tensor) -> Tensor:
    """The reference as P(bit = 1) at every position of p (B, 9n)."""
    if reference.dim() == 1:  # per frame position
        return reference.to(p).repeat(p.size(1) // FRAME_BITS).expand_as(p)
    return reference.to(p)


def prediction_telemetry(logits: Tensor, reference: Tensor) -> dict[str, Tensor]:
    """K, C and S of the predictions (B, 9n, 2), each per sequence (B,), from one softmax: what
    the module logs every step, the losses use and the safety gate judges."""
    p = bit_probabilities(logits)
    q = data_bits(_reference_like(reference, p))
    p = data_bits(p)
    return {"K": _negentropy_of(p), "C": flip_rate_complexity(p), "S": _symbiosis_of(p, q)}


def telemetry_of(logits: Tensor, bits: Tensor, reference: Tensor) -> dict[str, Tensor]:
    """Batch means of K, C, S of the predictions and K, C (flip-rate statistic) of the data."""
    telemetry = {k: v.mean() for k, v in prediction_telemetry(logits, reference).items()}
    telemetry["K_data"] = negentropy(bits).mean()
    telemetry["C_data"] = flip_rate_complexity(data_bits(bits).float()).mean()
    return telemetry


def marginal_reference(byte_counts: Tensor) -> Tensor:
    """The ``marginal`` symbiosis reference: P(bit = 1) at each of the 9 frame positions of a
    corpus with the given count of each byte value (256,), (9,) float32."""
    counts = byte_counts.double()
    return (counts @ FRAME_TABLE.to(counts.device, torch.float64) / counts.sum()).float()


def attention_entropy(weights: Tensor) -> Tensor:
    """Mean entropy (nats) of attention distributions (B, H, T, K) per head, (H,): low = each
    query attends to few keys, log(K) = uniform."""
    w = weights.float().clamp(min=1e-12)
    return -(w * w.log()).sum(-1).mean((0, 2))


def activation_stats(x: Tensor) -> dict[str, float]:
    """Mean, standard deviation, root-mean-square and largest magnitude of activations x."""
    x = x.detach().float()
    return {
        "mean": x.mean().item(),
        "std": x.std().item(),
        "rms": x.pow(2).mean().sqrt().item(),
        "absmax": x.abs().max().item(),
    }


class SequenceMean(Metric):
    """Mean of a per-sequence telemetry value over every sequence seen, on every rank."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("total", "count"):
            zero = torch.tensor(0.0, dtype=torch.float64)
            self.add_state(name, default=zero, dist_reduce_fx="sum")

    def _add(self, values: Tensor) -> None:
        # out of place: see BitsPerByte.update
        self.total = self.total + values.detach().double().sum()
        self.count = self.count + values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()


class Negentropy(SequenceMean):
    """K: of bits (B, 9n) or of predictions (logits (B, 9n, 2))."""

    higher_is_better = None

    def update(self, x: Tensor) -> None:
        self._add(prediction_negentropy(x) if x.is_floating_point() else negentropy(x))


class LZComplexity(SequenceMean):
    """C: exact normalised LZ76 of bits (B, 9n), or the flip-rate proxy of logits (B, 9n, 2)."""

    higher_is_better = None

    def update(self, x: Tensor) -> None:
        self._add(prediction_complexity(x) if x.is_floating_point() else lz76_complexity(x))


class Symbiosis(SequenceMean):
    """S of predictions (logits (B, 9n, 2)) against a reference (see :func:`symbiosis`)."""

    higher_is_better = True

    def update(self, logits: Tensor, reference: Tensor) -> None:
        self._add(symbiosis(logits, reference))
