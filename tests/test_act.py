"""ACT halting (model/act.py): weights, early exit, frozen halted states, gradients, caching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitlm.core.errors import BitLMError
from bitlm.generation import GenerationOptions, generate
from bitlm.model import build_model
from bitlm.model.act import HaltingUnits, run_layers
from bitlm.model.config import ModelConfig
from tests.test_model import TRUNKS, _greedy_uncached, tiny


def set_halting(model, bias: float, weight_std: float = 0.0) -> None:
    for unit in model.trunk.halting.units:
        nn.init.normal_(unit.weight, std=weight_std) if weight_std else nn.init.zeros_(unit.weight)
        nn.init.constant_(unit.bias, bias)


@pytest.mark.parametrize("trunk", TRUNKS)
@pytest.mark.parametrize("reversible", [True, False])
def test_untrained_model_runs_every_layer_with_weights_summing_to_one(trunk, reversible):
    torch.manual_seed(0)
    model = build_model(tiny(trunk=trunk, reversible=reversible, n_layers=3, use_act=True))
    _, telemetry = model(torch.randint(0, 2, (2, 72)))
    weights = telemetry["halt_probs"]
    assert weights.shape[-1] == 3
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert telemetry["layers_run"].item() == 3
    p = torch.sigmoid(torch.tensor(-3.0)).item()  # HALT_BIAS: remainder 1 − 2p
    assert telemetry["ponder_cost"].item() == pytest.approx(3 + 1 - 2 * p, rel=1e-5)


@pytest.mark.parametrize("trunk", TRUNKS)
@pytest.mark.parametrize("reversible", [True, False])
def test_positions_halting_after_the_first_layer_skip_the_rest(trunk, reversible):
    torch.manual_seed(0)
    config = tiny(trunk=trunk, reversible=reversible, n_layers=3, use_act=True)
    model = build_model(config).eval()
    set_halting(model, bias=20.0)  # p ≈ 1: every position halts after layer 0
    one_layer = build_model(tiny(trunk=trunk, reversible=reversible, n_layers=1)).eval()
    missing, _ = one_layer.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    bits = torch.randint(0, 2, (2, 72))
    with torch.no_grad():
        logits, telemetry = model(bits)
        expected, _ = one_layer(bits)
    assert telemetry["layers_run"].item() == 1
    assert telemetry["halt_probs"].shape[-1] == 1  # layers 1 and 2 never ran
    torch.testing.assert_close(logits, expected)


def test_halted_positions_keep_their_state_and_the_output_is_the_mixture():
    config = ModelConfig(d_model=4, n_heads=2, n_layers=3, max_seq_len=9, use_act=True)
    halting = HaltingUnits(config)
    halting.reset_parameters()
    with torch.no_grad():
        halting.units[0].weight.zero_()
        halting.units[0].weight[0, 0] = 1.0  # p = σ(±40 + bias −3)
        halting.units[1].weight.zero_()
    x = torch.zeros(1, 4, 4)
    x[0, :2, 0], x[0, 2:, 0] = 40.0, -40.0
    layers_applied = []

    def step(i, block, states):
        layers_applied.append(i)
        return (states[0] + torch.tensor([0.0, 1.0, 0.0, 0.0]),)

    (out,) = run_layers(nn.ModuleList([nn.Identity()] * 3), halting, (x,), step, cached=False)
    assert layers_applied == [0, 1, 2]  # positions 2, 3 still run
    # positions 0, 1 halted after layer 0 with all their weight on it
    torch.testing.assert_close(out[0, :2, 1], torch.ones(2))
    # positions 2, 3: p ≈ 0 after layer 0, σ(−3) after layer 1, the rest on layer 2
    p = torch.sigmoid(torch.tensor(-3.0))
    expected = 2 * p + 3 * (1 - p)  # states after layers 1 and 2 carry 2 and 3
    torch.testing.assert_close(out[0, 2:, 1], expected.expand(2), rtol=1e-4, atol=1e-4)
    assert halting.last["layers_run"].item() == pytest.approx((1 + 1 + 3 + 3) / 4)


@pytest.mark.parametrize("trunk", TRUNKS)
def test_act_gradients_reach_every_parameter(trunk):
    torch.manual_seed(0)
    model = build_model(tiny(trunk=trunk, n_layers=3, use_act=True))
    set_halting(model, bias=-0.5, weight_std=0.5)
    logits, telemetry = model(torch.randint(0, 2, (2, 72)))
    (logits.logsumexp(-1).mean() + telemetry["ponder_cost"]).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(unit.bias.grad.abs().item() > 0 for unit in model.trunk.halting.units)


@pytest.mark.parametrize("trunk", TRUNKS)
def test_kv_cached_generation_with_halting_matches_uncached(trunk):
    torch.manual_seed(0)
    model = build_model(tiny(trunk=trunk, n_layers=3, max_seq_len=144, use_act=True)).eval()
    model.trunk.halting.threshold = 0.6
    set_halting(model, bias=-0.2, weight_std=30.0)  # some positions halt early, some do not
    with torch.no_grad():
        _, telemetry = model(torch.randint(0, 2, (1, 144)))
        depth = telemetry["layers_run"].item()
        assert 1 < depth < 3 and depth != 2  # a mix: not every position halts at one layer
        expected = _greedy_uncached(model, b"Hi!", 20)
    assert generate(model, b"Hi!", 20, GenerationOptions(temperature=0)) == expected


@pytest.mark.parametrize("threshold", [0.0, 1.5, "x"])
def test_config_rejects_bad_act_threshold(threshold):
    with pytest.raises(BitLMError, match="act_threshold"):
        tiny(use_act=True, act_threshold=threshold)
