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
from bitlm.model.generate import generate_bits
from bitlm.safety import safe_sample_with_retry


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Sample, then decode leniently and *count* parity failures (0 by construction: parity
    bits are computed, not sampled) so the claim is measured on every call."""
    _check_sampling(cfg)
    model = load_model(cfg.ckpt_path, pick_device(cfg.device))
    if not isinstance(model, BitModel):
        raise BitLMError(
            f"{cfg.ckpt_path} is a model.unit={model.config.unit} model; bitlm-generate samples "
            "bit models (the byte-level baseline is for training and bitlm-eval comparisons)"
        )
    prompt = (cfg.prompt or "").encode()
    sampling = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "stop": cfg.stop.encode() if cfg.stop else None,
        "kv_cache": cfg.kv_cache,
    }
    report: dict[str, Any] = {}
    if cfg.safety.enabled:
        safety = dict(cfg.safety)
        del safety["enabled"]
        sample = safe_sample_with_retry(
            model, prompt, cfg.max_new_bytes, seed=cfg.seed, **safety, **sampling
        )
        bits = sample["bits"]
        report = {"attempts": sample["attempts"], "telemetry": sample["telemetry"]}
    else:
        generator = torch.Generator(model.head.weight.device).manual_seed(cfg.seed)
        bits = generate_bits(model, prompt, cfg.max_new_bytes, generator=generator, **sampling)
    data, parity_errors = decode_bits(bits.cpu(), errors="replace")
    return {
        "text": data.decode("utf-8", errors="replace"),
        "bytes": len(data),
        "parity_errors": parity_errors,
        **report,
    }


def _check_sampling(cfg: DictConfig) -> None:
    for key in ("prompt", "stop"):
        value = cfg[key]
        if value is not None and not isinstance(value, str):
            raise BitLMError(
                f"{key}={value!r} was read as a {type(value).__name__}, not text: quote it, "
                f"e.g. '{key}=\"{value}\"'"
            )
    if not isinstance(cfg.max_new_bytes, int) or cfg.max_new_bytes < 0:
        raise BitLMError(f"max_new_bytes must be a non-negative integer, got {cfg.max_new_bytes}")
    if cfg.temperature < 0:
        raise BitLMError(f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise BitLMError(f"top_p must be in (0, 1], got {cfg.top_p}")


main = hydra_app("generate", generate)

if __name__ == "__main__":
    main()
