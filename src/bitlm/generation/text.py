"""Text in, text out with a loaded model: what ``bitlm-generate``, ``bitlm-serve`` and
``bitlm-mcp`` share, so the three answer the same question the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bitlm.core.bits import bytes_to_bits, decode_bits
from bitlm.evaluation.bpb import model_bits
from bitlm.generation.safety import judge, safe_sample_with_retry
from bitlm.generation.sample import sample
from bitlm.model import BitModel


def generate_text(
    model: BitModel,
    prompt: bytes,
    max_new_bytes: int,
    *,
    seed: int = 0,
    temperature: float = 0.8,
    safety: Mapping[str, Any] | None = None,
    fallback: BitModel | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Continue ``prompt``: ``{"text", "bytes", "parity_errors", "parity_repairs", "mode"}``.

    ``options``: ``bitlm.generation.sample.sample``'s (mode, top_p, stop, deadline …). ``safety``:
    ``safe_sample_with_retry``'s options (c_floor, s_floor, max_retries …) to gate the sample,
    adding ``"attempts"`` and the ``"telemetry"`` it was judged on (``SafetyError`` when no
    attempt passes); None samples once, ungated. The bits are decoded leniently and parity
    failures *counted* (0 by construction: causal sampling computes parity bits, diffusion
    sampling repairs them), so the claim is measured on every call.
    """
    report: dict[str, Any] = {"mode": options.get("mode") or model.config.mode}
    if safety is not None:
        result = safe_sample_with_retry(
            model,
            prompt,
            max_new_bytes,
            seed=seed,
            temperature=temperature,
            fallback=fallback,
            **safety,
            **options,
        )
        bits, repairs = result["bits"], result["parity_repairs"]
        report |= {k: result[k] for k in ("attempts", "mode", "telemetry")}
    else:
        generator = torch.Generator(model.head.weight.device).manual_seed(seed)
        bits, repairs = sample(
            model, prompt, max_new_bytes, temperature=temperature, generator=generator, **options
        )
    data, parity_errors = decode_bits(bits.cpu(), errors="replace")
    return {
        "text": data.decode("utf-8", errors="replace"),
        "bytes": len(data),
        "parity_errors": parity_errors,
        "parity_repairs": repairs,
        **report,
    }


def text_telemetry(model: BitModel, data: bytes) -> dict[str, float]:
    """K, C, S of the model's predictions on ``data`` (its last ``max_seq_len`` bits, whole
    frames: what the model sees at once) and the bits' own ``K_data``, ``C_data`` and exact
    ``C_lz76`` (``bitlm.generation.safety.judge``)."""
    bits = bytes_to_bits(data)[-model.config.max_seq_len :]
    _, telemetry = judge(model, bits.to(model.head.weight.device)[None])
    return telemetry


def text_bpb(model: nn.Module, data: bytes) -> float:
    """Bits per byte of ``data`` under the model (sliding windows, ``bitlm.evaluation.bpb``)."""
    return model_bits(model, data, progress=False) / len(data)
