"""The safety gate, and safe inference and sampling built on it.

The gate smooths two telemetry values (``telemetry/metrics.py``) and fires when either sinks to
its floor: C (LZ complexity: very low = repetitive, degenerate output) and S (symbiosis: very low
= predictions far from the reference distribution)::

    EMA_0 = x_0,   EMA_t = decay · EMA_{t−1} + (1 − decay) · x_t        (decay 0.9)
    fires at update t  ⇔  t > burn_in  and  (EMA C ≤ c_floor  or  EMA S ≤ s_floor)

Floors: c_floor 0.3 as DESIGN.md; s_floor 0.25, not DESIGN.md's 0.5, because S against the
corpus marginals falls as a model gets better (sharper predictions are further from them): the
default quickstart model ends at val S = 0.49 (``experiments/telemetry``).

In training a callback (``training/callbacks/safety_gate.py``) feeds it the predictions' C and
S each step and warns, stops or rolls back. At inference ``hil_safe_inference`` judges one batch
(C = exact LZ76 of the bits, S = the model's predictions on them against a reference) and
``safe_sample_with_retry`` re-samples with a new seed and a higher temperature until a sample
passes, backing off exponentially between attempts and falling back to a diffusion model when
one is given.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bitlm.core.bits import bits_to_text, frame_values
from bitlm.core.errors import BitLMError
from bitlm.generation.diffusion import Sample
from bitlm.generation.options import GenerationOptions
from bitlm.generation.sample import sample
from bitlm.model import BitModel
from bitlm.model.noise import frame_predictions
from bitlm.model.transformer import evaluating
from bitlm.telemetry.metrics import lz76_complexity, marginal_reference, telemetry_of


class SafetyError(BitLMError):
    """Output the safety gate rejected; ``telemetry`` holds the values it was judged on."""

    def __init__(self, message: str, telemetry: dict[str, Any]) -> None:
        super().__init__(message)
        self.telemetry = telemetry


@dataclass
class SafetyGate:
    """EMA of C and S with burn-in and floors (module docstring). Plain state: ``state_dict``
    and ``load_state_dict`` round-trip it exactly."""

    c_floor: float = 0.3
    s_floor: float = 0.25
    decay: float = 0.9
    burn_in: int = 0
    steps: int = 0
    ema_c: float | None = None
    ema_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise BitLMError(f"safety decay must be in [0, 1), got {self.decay}")
        if self.burn_in < 0:
            raise BitLMError(f"safety burn_in must be >= 0, got {self.burn_in}")

    def update(self, c: float, s: float) -> bool:
        """Fold in one observation of C and S; True when the gate fires."""
        self.steps += 1
        self.ema_c = c if self.ema_c is None else self.decay * self.ema_c + (1 - self.decay) * c
        self.ema_s = s if self.ema_s is None else self.decay * self.ema_s + (1 - self.decay) * s
        return self.steps > self.burn_in and (
            self.ema_c <= self.c_floor or self.ema_s <= self.s_floor
        )

    def restart(self) -> None:
        """Forget the averages and serve the burn-in again (after a rollback)."""
        self.steps, self.ema_c, self.ema_s = 0, None, None

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class DriftWatch:
    """Drift of monitored metrics: a value that moved by more than ``threshold`` from the one
    ``window`` observations earlier (the original's dashboard rule: 0.2 over 10 steps). After a
    drift the metric's window starts afresh, so one shift is reported once. Plain state:
    ``history`` (name → recent values) round-trips through ``state_dict``."""

    def __init__(self, threshold: float = 0.2, window: int = 10) -> None:
        if window < 1:
            raise BitLMError(f"drift window must be >= 1, got {window}")
        self.threshold = threshold
        self.window = window
        self.history: dict[str, deque[float]] = {}

    def update(self, name: str, value: float) -> float | None:
        """Record ``name``'s newest value; the change over the window when it drifted."""
        history = self.history.setdefault(name, deque(maxlen=self.window + 1))
        history.append(value)
        change = value - history[0]
        if len(history) == history.maxlen and abs(change) > self.threshold:
            history.clear()
            history.append(value)
            return change
        return None

    def state_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.history.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        for name, values in state.items():
            self.history[name] = deque(values, maxlen=self.window + 1)


def judge(
    model: BitModel, bits: Tensor, reference: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """``(logits, telemetry)`` of a bit model on bits (B, 9n): the batch means the training
    module logs (``telemetry_of``: the predictions' K, C, S and the bits' ``K_data``,
    ``C_data``) and the bits' exact LZ76 (``C_lz76``). The reference defaults to the bits' own
    per-position marginals. A diffusion model's predictions are its ``frame_predictions``
    (each frame masked in turn), not its view of the clean bits, which would copy them."""
    if reference is None:
        values = torch.bincount(frame_values(bits).flatten().long(), minlength=256)
        reference = marginal_reference(values)
    with evaluating(model), torch.no_grad():
        if model.config.mode == "diffusion":
            logits = frame_predictions(model, bits)
        else:
            logits, _ = model(bits)
    telemetry = {k: v.item() for k, v in telemetry_of(logits, bits, reference).items()}
    telemetry["C_lz76"] = lz76_complexity(bits).mean().item()
    return logits, telemetry


def hil_safe_inference(
    model: BitModel,
    bits: Tensor,
    *,
    reference: Tensor | None = None,
    c_floor: float = 0.3,
    s_floor: float = 0.25,
    strict: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """Run the model on bits (B, 9n) and judge them: unsafe when the exact LZ76 complexity of
    the bits is ≤ ``c_floor`` or the predictions' symbiosis with ``reference`` is ≤ ``s_floor``.

    Returns ``(logits, telemetry)``; the telemetry (``judge``) gains the flags ``c_low``,
    ``s_low`` and ``safe``. Strict (human-in-the-loop) mode raises ``SafetyError`` carrying that
    telemetry instead of returning unsafe output.
    """
    logits, telemetry = judge(model, bits, reference)
    telemetry["c_low"] = telemetry["C_lz76"] <= c_floor
    telemetry["s_low"] = telemetry["S"] <= s_floor
    telemetry["safe"] = not (telemetry["c_low"] or telemetry["s_low"])
    if strict and not telemetry["safe"]:
        raise SafetyError(
            f"unsafe output: LZ76 complexity {telemetry['C_lz76']:.3f} (floor {c_floor}), "
            f"symbiosis {telemetry['S']:.3f} (floor {s_floor})",
            telemetry,
        )
    return logits, telemetry


def safe_sample_with_retry(
    model: BitModel,
    prompt: bytes,
    max_new_bytes: int,
    options: GenerationOptions | None = None,
    *,
    max_retries: int = 3,
    temperature_step: float = 0.25,
    backoff_s: float = 0.05,
    reference: Tensor | None = None,
    c_floor: float = 0.3,
    s_floor: float = 0.25,
    fallback: BitModel | None = None,
    sleep: Callable[[float], None] = time.sleep,
    draw: Callable[..., Sample] = sample,
) -> dict[str, Any]:
    """Sample a continuation that passes ``hil_safe_inference``; attempt k (0-based) uses seed
    ``options.seed + k`` and temperature ``options.temperature + k · temperature_step`` (more
    diverse after a repetitive sample), after waiting ``backoff_s · 2^(k−1)`` seconds.

    Attempt 0 samples ``model`` in ``options.mode`` (``bitlm.generation.sample.sample``).
    Retries fall back to diffusion mode when a diffusion model ``fallback`` is given: it fills
    the whole span at once instead of extending a sample bit by bit, so it cannot fall into the
    loop a causal sampler repeats. Every sample is judged by ``model``, on its last
    ``max_seq_len`` bits (whole frames: what the model sees). The causal options ``top_p`` and
    ``kv_cache`` apply to the causal attempts only. ``draw`` takes ``sample``'s arguments and
    samples (a server passes its batching engine's ``sample``).
    Returns ``{"text", "bits", "attempts", "mode", "parity_repairs", "telemetry"}`` of the first
    safe sample; raises ``SafetyError`` (with the last telemetry) when all ``1 + max_retries``
    attempts fail.
    """
    options = options or GenerationOptions()
    if max_retries < 0:
        raise BitLMError(f"max_retries must be >= 0, got {max_retries}")
    if fallback is not None and fallback.config.mode != "diffusion":
        raise BitLMError("the safety fallback model must be a model.mode=diffusion model")
    telemetry: dict[str, Any] = {}
    for attempt in range(max_retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        sampler, tried = model, options
        if attempt and fallback is not None:  # top_p is causal-only: diffusion refuses it
            sampler, tried = fallback, dataclasses.replace(options, mode="diffusion", top_p=1.0)
        tried = dataclasses.replace(
            tried,
            seed=options.seed + attempt,
            temperature=options.temperature + attempt * temperature_step,
        )
        bits, repairs = draw(sampler, prompt, max_new_bytes, tried)
        telemetry = verdict(model, bits, reference, c_floor, s_floor)
        telemetry["temperature"] = tried.temperature
        if telemetry["safe"]:
            return {
                "text": bits_to_text(bits),
                "bits": bits,
                "attempts": attempt + 1,
                "mode": sampler.config.mode,
                "parity_repairs": repairs,
                "telemetry": telemetry,
            }
    raise SafetyError(f"no sample passed the safety gate in {max_retries + 1} attempts", telemetry)


def verdict(
    model: BitModel,
    bits: Tensor,
    reference: Tensor | None = None,
    c_floor: float = 0.3,
    s_floor: float = 0.25,
) -> dict[str, Any]:
    """``hil_safe_inference``'s lenient telemetry of a sample (bits (9n,)) on its last
    ``max_seq_len`` bits; an empty sample (an immediate stop string) has nothing to judge and
    is safe."""
    if not bits.numel():
        return {"safe": True}
    _, telemetry = hil_safe_inference(
        model,
        bits[-model.config.max_seq_len :].to(model.head.weight.device)[None],
        reference=reference,
        c_floor=c_floor,
        s_floor=s_floor,
        strict=False,
    )
    return telemetry
