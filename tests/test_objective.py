"""Loss, bpb and the LR schedule."""

import math

import pytest
import torch

from bitlm.lit.module import warmup_cosine
from bitlm.objective import BitsPerByte, bit_cross_entropy, data_bit_mask


def test_data_bit_mask_marks_eight_of_every_nine():
    mask = data_bit_mask(27)
    assert mask.tolist() == ([True] * 8 + [False]) * 3


def test_uniform_predictions_cost_exactly_eight_bits_per_byte():
    bits = torch.randint(0, 2, (3, 90))
    loss, ce_bits, n_bytes = bit_cross_entropy(torch.zeros(3, 90, 2), bits)
    assert n_bytes.item() == 30
    assert ce_bits.item() / n_bytes.item() == pytest.approx(8.0)
    assert loss.item() == pytest.approx(math.log(2))


def test_parity_targets_are_excluded_from_loss_and_bpb_unless_asked():
    bits = torch.zeros(1, 18, dtype=torch.long)
    logits = torch.zeros(1, 18, 2)
    logits[:, 8::9, 0] = -20.0  # confidently wrong about both parity bits only
    loss, ce_bits, _ = bit_cross_entropy(logits, bits)
    assert loss.item() == pytest.approx(math.log(2))
    assert ce_bits.item() == pytest.approx(16.0)
    loss_with_parity, ce_with_parity, _ = bit_cross_entropy(logits, bits, include_parity=True)
    assert loss_with_parity.item() > 2.0
    assert ce_with_parity.item() == pytest.approx(16.0)


def test_bits_per_byte_metric_weights_batches_by_bytes():
    metric = BitsPerByte()
    metric.update(torch.tensor(80.0), torch.tensor(10.0))
    metric.update(torch.tensor(10.0), torch.tensor(10.0))
    assert metric.compute().item() == pytest.approx(4.5)


def test_warmup_then_cosine_to_floor():
    f = lambda s: warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
