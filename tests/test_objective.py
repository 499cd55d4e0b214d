"""Loss, bpb and the LR schedule."""

import math

import pytest
import torch

from bitlm.objectives.losses import BitsPerByte, bit_cross_entropy, byte_cross_entropy
from bitlm.training.optim import fused_adamw, warmup_cosine


def test_uniform_predictions_cost_exactly_eight_bits_per_byte():
    bits = torch.randint(0, 2, (3, 90))
    loss, byte_bits = bit_cross_entropy(torch.zeros(3, 90, 2), bits)
    assert byte_bits.shape == (3, 10)
    torch.testing.assert_close(byte_bits, torch.full((3, 10), 8.0))
    assert loss.item() == pytest.approx(math.log(2))


def test_uniform_byte_predictions_cost_eight_bits_too():
    values = torch.randint(0, 256, (2, 7))
    loss, byte_bits = byte_cross_entropy(torch.zeros(2, 7, 256), values)
    torch.testing.assert_close(byte_bits, torch.full((2, 7), 8.0))
    assert loss.item() == pytest.approx(math.log(256))


def test_parity_targets_are_excluded_from_loss_and_bpb_unless_asked():
    bits = torch.zeros(1, 18, dtype=torch.long)
    logits = torch.zeros(1, 18, 2)
    logits[:, 8::9, 0] = -20.0  # confidently wrong about both parity bits only
    loss, byte_bits = bit_cross_entropy(logits, bits)
    assert loss.item() == pytest.approx(math.log(2))
    assert byte_bits.tolist() == [[pytest.approx(8.0), pytest.approx(8.0)]]
    loss_with_parity, with_parity = bit_cross_entropy(logits, bits, include_parity=True)
    assert loss_with_parity.item() > 2.0
    torch.testing.assert_close(with_parity, byte_bits)


def test_bits_per_byte_metric_weights_batches_by_bytes():
    metric = BitsPerByte()
    metric.update(torch.full((2, 5), 8.0))
    metric.update(torch.full((10,), 1.0))
    assert metric.compute().item() == pytest.approx(4.5)


def test_warmup_then_cosine_to_floor():
    f = lambda s: warmup_cosine(s, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)


def test_adamw_runs_fused_on_cuda_except_under_fp16_scaling():
    assert fused_adamw({"cuda"}, "bf16-mixed") is True
    assert fused_adamw({"cuda"}, "32-true") is True
    assert fused_adamw({"cuda"}, "16-mixed") is None  # the scaler must unscale before clipping
    assert fused_adamw({"cpu"}, "bf16-mixed") is None
    assert fused_adamw({"cuda", "cpu"}, "32-true") is None
