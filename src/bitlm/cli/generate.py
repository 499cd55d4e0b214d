"""bitlm-generate: continue a prompt with a trained model; the output always decodes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app, pick_device
from bitlm.core.errors import BitLMError
from bitlm.generation.sample import sampling_mode
from bitlm.generation.text import generate_text
from bitlm.io import load_model
from bitlm.model import BitModel


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Sample (``bitlm.generation.text.generate_text``), gated by the safety settings if enabled."""
    _check_sampling(cfg)
    prompt = prompt_bytes(cfg.prompt, cfg.prompt_file)
    device = pick_device(cfg.device)
    model = bit_model(cfg.ckpt_path, device)
    options = {
        "mode": sampling_mode(model, cfg.mode),
        "suffix": (cfg.suffix or "").encode(),
        "top_p": cfg.top_p,
        "stop": cfg.stop.encode() if cfg.stop else None,
        "kv_cache": cfg.kv_cache,
        "diffusion_steps": cfg.diffusion_steps,
        "schedule": cfg.schedule,
        "remask": cfg.remask,
        "choice_temperature": cfg.choice_temperature,
    }
    safety, fallback = None, None
    if cfg.safety.enabled:
        safety = dict(cfg.safety)
        del safety["enabled"]
        fallback = safety.pop("diffusion_model")
        if fallback is not None:
            fallback = bit_model(fallback, device)
    return generate_text(
        model,
        prompt,
        cfg.max_new_bytes,
        seed=cfg.seed,
        temperature=cfg.temperature,
        safety=safety,
        fallback=fallback,
        **options,
    )


def prompt_bytes(prompt: str | None, prompt_file: str | None) -> bytes:
    """The prompt's bytes: ``prompt`` (text from the command line), or the raw bytes of
    ``prompt_file`` (``-``: standard input), which need no quoting and may hold any bytes."""
    if prompt_file is None:
        return (prompt or "").encode()
    if prompt:
        raise BitLMError("pass the prompt as prompt=… or prompt_file=…, not both")
    if prompt_file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(prompt_file).expanduser().read_bytes()
    except OSError as err:
        raise BitLMError(f"cannot read prompt_file={prompt_file}: {err.strerror}") from err


def bit_model(path: str, device: torch.device) -> BitModel:
    """The bit model at ``path`` (what generating commands serve); refuses the byte baseline."""
    model = load_model(path, device)
    if not isinstance(model, BitModel):
        raise BitLMError(
            f"{path} is a model.unit={model.config.unit} model; only bit models generate "
            "text (the byte-level baseline is for training and bitlm-eval comparisons)"
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
    if cfg.max_new_bytes > cfg.limit_new_bytes:
        raise BitLMError(
            f"max_new_bytes={cfg.max_new_bytes} is over limit_new_bytes={cfg.limit_new_bytes} "
            "(generation keeps every byte in memory): ask for fewer, or raise limit_new_bytes"
        )
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
