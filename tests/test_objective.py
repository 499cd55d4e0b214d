"""Loss, bpb, the LR schedule, and each training objective on a plain model (no Lightning)."""

import math

import pytest
import torch
import torch.nn.functional as F

from bitlm.core.bits import bytes_to_bits, frame_values
from bitlm.core.errors import BitLMError
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.objectives import (
    ByteObjective,
    CausalBitObjective,
    DiffusionObjective,
    Knobs,
    check_knobs,
    objective_for,
)
from bitlm.objectives.losses import (
    BitsPerByte,
    bit_cross_entropy,
    byte_cross_entropy,
    smoothed_ce,
)
from bitlm.objectives.regularisers import PonderCost
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


# --- the objectives, each on a plain model and a tensor (no Lightning) -------------------------


def _model_and_bits(**config):
    torch.manual_seed(0)
    values = dict(d_model=32, n_heads=2, n_layers=2, max_seq_len=72, **config)
    model = build_model(ModelConfig(**values))
    return model, bytes_to_bits(b"objectiv" * 3)[:144].view(2, 72)


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({}, CausalBitObjective),
        ({"trunk": "hierarchical"}, CausalBitObjective),
        ({"unit": "byte"}, ByteObjective),
        ({"mode": "diffusion"}, DiffusionObjective),
    ],
)
def test_each_model_gets_its_objective_and_no_other(config, kind):
    model, _ = _model_and_bits(**config)
    assert type(objective_for(model.config)) is kind
    others = {CausalBitObjective, ByteObjective, DiffusionObjective} - {kind}
    for other in others:
        with pytest.raises(BitLMError):
            other.check_model(model.config)


def test_next_bit_objective_returns_loss_bpb_and_predictions_for_telemetry():
    model, bits = _model_and_bits()
    objective = CausalBitObjective()
    out = objective.training_step(model, bits, Knobs())
    logits, _ = model(bits)
    loss, byte_bits = bit_cross_entropy(logits, bits)
    torch.testing.assert_close(out.loss, loss)
    assert set(out.metrics) == {"bpb"}
    torch.testing.assert_close(out.metrics["bpb"][0], byte_bits)
    assert out.predictions.shape == (2, 72, 2) and out.seen is bits
    # read run-length coded: the same logits (forward_compressed), reported apart
    coded = objective.training_step(model, bits, Knobs(compress_prob=1.0))
    assert set(coded.metrics) == {"bpb_compressed"}
    torch.testing.assert_close(coded.loss, loss)


def test_label_smoothing_shapes_the_training_loss_never_bpb():
    model, bits = _model_and_bits()
    plain, smoothed = CausalBitObjective(), CausalBitObjective(label_smoothing=0.1)
    train = smoothed.training_step(model, bits, Knobs())
    logits = model(bits)[0].view(2, 8, 9, 2)[:, :, :8]  # data bits only
    data = bits.long().view(2, 8, 9)[:, :, :8]
    expected = F.cross_entropy(logits.reshape(-1, 2), data.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(train.loss, expected)
    torch.testing.assert_close(
        train.metrics["bpb"][0], plain.validation_step(model, bits, 0).metrics["bpb"][0]
    )
    torch.testing.assert_close(
        smoothed.validation_step(model, bits, 0).loss, plain.validation_step(model, bits, 0).loss
    )
    logits, targets = torch.randn(4, 6, 5), torch.randint(0, 5, (4, 6))
    _, trained = smoothed_ce(logits, targets, 0.2)
    expected = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), label_smoothing=0.2, reduction="none"
    )
    torch.testing.assert_close(trained.flatten(), expected)
    with pytest.raises(BitLMError, match="label_smoothing must be in"):
        objective_for(model.config, label_smoothing=1.0)
    with pytest.raises(BitLMError, match="diffusion trains on masked bits"):
        objective_for(ModelConfig(mode="diffusion"), label_smoothing=0.1)


def test_next_byte_objective_scores_the_256_way_softmax_and_predicts_no_bits():
    model, bits = _model_and_bits(unit="byte")
    objective = ByteObjective()
    out = objective.training_step(model, bits, Knobs())
    loss, byte_bits = byte_cross_entropy(model(bits)[0], frame_values(bits))
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.metrics["bpb"][0], byte_bits)
    assert out.predictions is None and not objective.bit_predictions


def test_denoising_validation_is_seeded_by_the_batch_index():
    model, bits = _model_and_bits(mode="diffusion")
    objective = DiffusionObjective(telemetry_windows=1)
    first, again = (objective.validation_step(model, bits, 3) for _ in range(2))
    torch.testing.assert_close(first.loss, again.loss)
    assert set(first.metrics) == {"bit_acc", "bpb"}
    assert objective.validation_step(model, bits, 4).loss != first.loss
    train = objective.training_step(model, bits, Knobs(noise_level=0.5))
    assert train.seen.shape == (1, 72)  # telemetry reads one window
    assert DiffusionObjective(None).training_step(model, bits, Knobs()).predictions is None


def test_knobs_an_objective_does_not_read_are_refused():
    check_knobs(Knobs(compress_prob=0.5), CausalBitObjective())
    with pytest.raises(BitLMError, match=r"compress_prob=0\.5 means nothing"):
        check_knobs(Knobs(compress_prob=0.5), DiffusionObjective())
    with pytest.raises(BitLMError, match=r"noise_level=0\.5 means nothing"):
        check_knobs(Knobs(noise_level=0.5), ByteObjective())


def test_ponder_cost_is_added_only_when_the_model_halts():
    loss = torch.tensor(2.0)
    assert PonderCost(0.5)(loss, {}) == 2.0
    assert PonderCost(0.5)(loss, {"ponder_cost": torch.tensor(3.0)}) == 3.5
