"""Text in, text out with a loaded model: what ``bitlm-generate``, ``bitlm-serve`` and
``bitlm-mcp`` share, so the three answer the same question the same way."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bitlm.core.bits import bytes_to_bits, decode_bits
from bitlm.core.errors import BitLMError
from bitlm.generation.diffusion import Sample
from bitlm.generation.options import GenerationOptions
from bitlm.generation.safety import judge, safe_sample_with_retry, verdict
from bitlm.generation.sample import sample
from bitlm.io import load_model
from bitlm.model import BitModel


def load_bit_model(path: str | Path, device: torch.device) -> BitModel:
    """The bit model at ``path`` (what generating commands serve); refuses the byte baseline."""
    model = load_model(path, device)
    if not isinstance(model, BitModel):
        raise BitLMError(
            f"{path} is a model.unit={model.config.unit} model; only bit models generate "
            "text (the byte-level baseline is for training and bitlm-eval comparisons)"
        )
    return model


def generate_text(
    model: BitModel,
    prompt: bytes,
    max_new_bytes: int,
    options: GenerationOptions | None = None,
    *,
    safety: Mapping[str, Any] | None = None,
    fallback: BitModel | None = None,
    draw: Callable[..., Sample] = sample,
) -> dict[str, Any]:
    """Continue ``prompt``: ``{"text", "bytes", "parity_errors", "parity_repairs", "mode"}``.

    ``safety``: ``safe_sample_with_retry``'s options (c_floor, s_floor, max_retries …) to gate
    the sample, adding ``"attempts"`` and the ``"telemetry"`` it was judged on (``SafetyError``
    when no attempt passes); None samples once, ungated. The bits are decoded leniently and
    parity failures *counted* (0 by construction: causal sampling computes parity bits,
    diffusion sampling repairs them), so the claim is measured on every call. ``draw`` samples
    (``sample``'s arguments; a server passes its batching engine's ``Engine.sample``).
    """
    options = options or GenerationOptions()
    report: dict[str, Any] = {"mode": options.mode or model.config.mode}
    if safety is not None:
        result = safe_sample_with_retry(
            model, prompt, max_new_bytes, options, fallback=fallback, draw=draw, **safety
        )
        bits, repairs = result["bits"], result["parity_repairs"]
        report |= {k: result[k] for k in ("attempts", "mode", "telemetry")}
    else:
        bits, repairs = draw(model, prompt, max_new_bytes, options)
    return sample_report(bits, repairs) | report


def sample_report(bits: Tensor, repairs: int = 0) -> dict[str, Any]:
    """``{"text", "bytes", "parity_errors", "parity_repairs"}`` of sampled bits (9n,): decoded
    leniently, parity failures counted."""
    data, parity_errors = decode_bits(bits.cpu(), errors="replace")
    return {
        "text": data.decode("utf-8", errors="replace"),
        "bytes": len(data),
        "parity_errors": parity_errors,
        "parity_repairs": repairs,
    }


def streamed_report(
    model: BitModel, bits: Tensor, safety: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What ends a stream of ``bits``: ``sample_report`` without the text (already sent) and,
    when ``safety`` is on, the gate's verdict (``safe``) and the ``telemetry`` it judged."""
    report = sample_report(bits)
    del report["text"]
    if safety is not None:
        telemetry = verdict(
            model, bits, c_floor=safety.get("c_floor", 0.3), s_floor=safety.get("s_floor", 0.25)
        )
        report |= {"safe": telemetry["safe"], "telemetry": telemetry}
    return report


def text_telemetry(model: BitModel, data: bytes) -> dict[str, float]:
    """K, C, S of the model's predictions on ``data`` (its last ``max_seq_len`` bits, whole
    frames: what the model sees at once) and the bits' own ``K_data``, ``C_data`` and exact
    ``C_lz76`` (``bitlm.generation.safety.judge``)."""
    bits = bytes_to_bits(data)[-model.config.max_seq_len :]
    _, telemetry = judge(model, bits.to(model.head.weight.device)[None])
    return telemetry
