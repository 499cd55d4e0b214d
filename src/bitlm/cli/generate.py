"""bitlm-generate: continue a prompt with a trained model; the output always decodes."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from bitlm.bits import decode_bits
from bitlm.cli.app import hydra_app, pick_device
from bitlm.errors import BitLMError
from bitlm.hub import load_model
from bitlm.model import BitModel
from bitlm.safety import safe_sample_with_retry
from bitlm.sampling import sample, sampling_mode


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Sample, then decode leniently and *count* parity failures (0 by construction: causal
    sampling computes parity bits, diffusion sampling repairs them) so the claim is measured on
    every call."""
    _check_sampling(cfg)
    device = pick_device(cfg.device)
    model = _bit_model(cfg.ckpt_path, device)
    mode = sampling_mode(model, cfg.mode)
    options = {
        "mode": mode,
        "suffix": (cfg.suffix or "").encode(),
        "top_p": cfg.top_p,
        "stop": cfg.stop.encode() if cfg.stop else None,
        "kv_cache": cfg.kv_cache,
        "diffusion_steps": cfg.diffusion_steps,
        "schedule": cfg.schedule,
        "remask": cfg.remask,
        "choice_temperature": cfg.choice_temperature,
    }
    prompt = (cfg.prompt or "").encode()
    report: dict[str, Any] = {"mode": mode}
    if cfg.safety.enabled:
        safety = dict(cfg.safety)
        del safety["enabled"]
        fallback = safety.pop("diffusion_model")
        if fallback is not None:
            fallback = _bit_model(fallback, device)
        result = safe_sample_with_retry(
            model,
            prompt,
            cfg.max_new_bytes,
            seed=cfg.seed,
            temperature=cfg.temperature,
            fallback=fallback,
            **safety,
            **options,
        )
        bits, repairs = result["bits"], result["parity_repairs"]
        report |= {k: result[k] for k in ("attempts", "mode", "telemetry")}
    else:
        generator = torch.Generator(model.head.weight.device).manual_seed(cfg.seed)
        bits, repairs = sample(
            model,
            prompt,
            cfg.max_new_bytes,
            temperature=cfg.temperature,
            generator=generator,
            **options,
        )
    data, parity_errors = decode_bits(bits.cpu(), errors="replace")
    return {
        "text": data.decode("utf-8", errors="replace"),
        "bytes": len(data),
        "parity_errors": parity_errors,
        "parity_repairs": repairs,
        **report,
    }


def _bit_model(path: str, device: torch.device) -> BitModel:
    model = load_model(path, device)
    if not isinstance(model, BitModel):
        raise BitLMError(
            f"{path} is a model.unit={model.config.unit} model; bitlm-generate samples bit "
            "models (the byte-level baseline is for training and bitlm-eval comparisons)"
        )
    return model


def _check_sampling(cfg: DictConfig) -> None:
    for key in ("prompt", "suffix", "stop"):
        value = cfg[key]
        if value is not None and not isinstance(value, str):
            raise BitLMError(
                f"{key}={value!r} was read as a {type(value).__name__}, not text: quote it, "
                f"e.g. '{key}=\"{value}\"'"
            )
    if not _is_number(cfg.max_new_bytes, int) or cfg.max_new_bytes < 0:
        raise BitLMError(f"max_new_bytes must be a non-negative integer, got {cfg.max_new_bytes!r}")
    if not _is_number(cfg.diffusion_steps, int) or cfg.diffusion_steps < 1:
        raise BitLMError(f"diffusion_steps must be a positive integer, got {cfg.diffusion_steps!r}")
    for key in ("temperature", "top_p", "choice_temperature"):
        if not _is_number(cfg[key], (int, float)):
            raise BitLMError(f"{key} must be a number, got {cfg[key]!r}")
    if cfg.temperature < 0:
        raise BitLMError(f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise BitLMError(f"top_p must be in (0, 1], got {cfg.top_p}")


def _is_number(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """``isinstance(value, kinds)``, booleans excluded (``diffusion_steps=true`` is no count)."""
    return isinstance(value, kinds) and not isinstance(value, bool)


main = hydra_app("generate", generate)

if __name__ == "__main__":
    main()
