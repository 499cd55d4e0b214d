"""SafetyGate semantics, strict and lenient safe inference, and the retrying sampler."""

from __future__ import annotations

import pytest
import torch

from bitlm.core.bits import bytes_to_bits
from bitlm.generation import GenerationOptions
from bitlm.generation.safety import (
    SafetyError,
    SafetyGate,
    hil_safe_inference,
    safe_sample_with_retry,
)
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from tests.conftest import ENGLISH


def test_ema_starts_at_the_first_value_then_decays():
    gate = SafetyGate(decay=0.9)
    gate.update(1.0, 0.8)
    assert (gate.ema_c, gate.ema_s) == (1.0, 0.8)
    gate.update(0.0, 0.0)
    assert gate.ema_c == pytest.approx(0.9) and gate.ema_s == pytest.approx(0.72)


def test_never_fires_during_burn_in_then_fires_at_the_floor():
    gate = SafetyGate(c_floor=0.3, s_floor=0.5, decay=0.0, burn_in=3)
    assert [gate.update(0.0, 0.0) for _ in range(3)] == [False] * 3
    assert gate.update(0.0, 1.0)  # C below its floor
    assert gate.update(1.0, 0.5)  # S exactly at its floor: the floors are inclusive
    assert not gate.update(0.31, 0.51)


def test_gate_state_round_trips_and_restart_serves_burn_in_again():
    gate = SafetyGate(burn_in=2)
    for c in (0.9, 0.1, 0.2):
        gate.update(c, 0.9)
    copy = SafetyGate(burn_in=2)
    copy.load_state_dict(gate.state_dict())
    assert copy == gate
    gate.restart()
    assert gate.ema_c is None and not gate.update(0.0, 0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=288)).eval()


def test_strict_inference_raises_with_the_telemetry(model):
    repetitive = bytes_to_bits(b"a" * 32)[None]
    with pytest.raises(SafetyError, match="LZ76 complexity") as err:
        hil_safe_inference(model, repetitive, c_floor=0.3, s_floor=0.0)
    assert err.value.telemetry["c_low"] and not err.value.telemetry["safe"]
    assert err.value.telemetry["C_lz76"] < 0.3


def test_lenient_inference_returns_flags(model):
    english = bytes_to_bits(ENGLISH[:32].encode())[None]
    logits, telemetry = hil_safe_inference(model, english, c_floor=0.3, s_floor=0.0, strict=False)
    assert logits.shape == (1, 288, 2)
    assert telemetry["safe"] and not telemetry["c_low"] and not telemetry["s_low"]
    _, telemetry = hil_safe_inference(model, english, s_floor=1.0, strict=False)
    assert telemetry["s_low"] and not telemetry["safe"]


def test_retry_changes_seed_and_temperature_and_backs_off(model):
    waits = []
    with pytest.raises(SafetyError, match="3 attempts") as err:
        safe_sample_with_retry(
            model, b"Hi", 8, max_retries=2, s_floor=1.0, backoff_s=0.1, sleep=waits.append
        )
    assert waits == pytest.approx([0.1, 0.2])
    assert err.value.telemetry["temperature"] == pytest.approx(1.5)  # 1 + 2 × 0.25


def test_retry_returns_the_first_safe_sample(model):
    result = safe_sample_with_retry(model, b"Hi", 8, s_floor=0.0, c_floor=0.0, sleep=None)
    assert result["attempts"] == 1 and isinstance(result["text"], str)
    assert result["telemetry"]["safe"] and result["bits"].numel() == 72


def test_an_empty_sample_is_accepted_without_judging(model):
    first = safe_sample_with_retry(model, b"Hi", 1, s_floor=0, c_floor=0, sleep=None)["bits"]
    stop = bytes([int("".join(map(str, first[:8].tolist())), 2)])  # the first byte it samples
    options = GenerationOptions(stop=stop)
    result = safe_sample_with_retry(model, b"Hi", 8, options, s_floor=1.0, sleep=None)
    assert result["bits"].numel() == 0 and result["attempts"] == 1
