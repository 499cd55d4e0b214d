"""bitlm-generate: continue a prompt with a trained model; the output always decodes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import BitLMError
from bitlm.core.runtime import pick_device
from bitlm.generation import GenerationOptions, generate_text, load_bit_model, sampling_mode
from bitlm.generation.options import is_number


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Sample (``bitlm.generation.generate_text``), gated by the safety settings if enabled."""
    options = _options(cfg)
    prompt = prompt_bytes(cfg.prompt, cfg.prompt_file)
    device = pick_device(cfg.device)
    model = load_bit_model(cfg.ckpt_path, device)
    sampling_mode(model, options.mode)  # refuse a mode the model cannot sample in, up front
    safety, fallback = None, None
    if cfg.safety.enabled:
        safety = dict(cfg.safety)
        del safety["enabled"]
        fallback = safety.pop("diffusion_model")
        if fallback is not None:
            fallback = load_bit_model(fallback, device)
    return generate_text(
        model, prompt, cfg.max_new_bytes, options, safety=safety, fallback=fallback
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


def _options(cfg: DictConfig) -> GenerationOptions:
    """The ``GenerationOptions`` of ``cfg`` (configs/generate.yaml), after the checks only the
    command line needs: Hydra reads an unquoted ``prompt=true`` as a boolean, and
    ``max_new_bytes`` is no option but bounded here."""
    for key in ("prompt", "suffix", "stop"):
        value = cfg[key]
        if value is not None and not isinstance(value, str):
            raise BitLMError(
                f"{key}={value!r} was read as a {type(value).__name__}, not text: quote it, "
                f"e.g. '{key}=\"{value}\"'"
            )
    if not is_number(cfg.max_new_bytes, int) or cfg.max_new_bytes < 0:
        raise BitLMError(f"max_new_bytes must be a non-negative integer, got {cfg.max_new_bytes!r}")
    if cfg.max_new_bytes > cfg.limit_new_bytes:
        raise BitLMError(
            f"max_new_bytes={cfg.max_new_bytes} is over limit_new_bytes={cfg.limit_new_bytes} "
            "(generation keeps every byte in memory): ask for fewer, or raise limit_new_bytes"
        )
    return GenerationOptions(
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        stop=cfg.stop.encode() if cfg.stop else None,
        seed=cfg.seed,
        mode=cfg.mode,
        kv_cache=cfg.kv_cache,
        suffix=(cfg.suffix or "").encode(),
        diffusion_steps=cfg.diffusion_steps,
        schedule=cfg.schedule,
        remask=cfg.remask,
        choice_temperature=cfg.choice_temperature,
    )


main = hydra_app("generate", generate)

if __name__ == "__main__":
    main()
