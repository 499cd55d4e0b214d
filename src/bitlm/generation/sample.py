"""One entry point for sampling text from a bit model, in the mode it was trained for.

Causal models continue a prompt bit by bit (``generation/causal.py``: KV cache, computed parity
bits); diffusion models fill a masked span after a prompt and, for infilling, before a suffix
(``objectives/diffusion.py``: iterative denoising, parity repair). Either way every frame decodes.
"""

from __future__ import annotations

import torch

from bitlm.core.bits import FRAME_BITS, decode_bits
from bitlm.core.errors import BitLMError
from bitlm.generation.causal import generate_bits
from bitlm.generation.diffusion import Sample, diffusion_generate
from bitlm.model import BitModel

MODES = ("causal", "diffusion")


def sample(
    model: BitModel,
    prompt: bytes,
    max_new_bytes: int,
    *,
    mode: str | None = None,
    suffix: bytes = b"",
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: bytes | None = None,
    kv_cache: bool = True,
    diffusion_steps: int = 16,
    schedule: str | None = None,
    remask: bool = False,
    choice_temperature: float = 1.0,
    generator: torch.Generator | None = None,
    deadline: float | None = None,
) -> Sample:
    """Up to ``max_new_bytes`` new bytes after ``prompt`` (and before ``suffix``, diffusion
    only); ``mode`` defaults to the model's own. Causal options: ``top_p``, ``kv_cache``;
    diffusion options: ``diffusion_steps``, ``schedule``, ``remask``,
    ``choice_temperature``. Both stop early at
    ``stop`` (for diffusion: the bytes from its first occurrence on are dropped), and raise
    ``TimeLimitExceeded`` once ``time.monotonic()`` passes ``deadline``."""
    mode = sampling_mode(model, mode)
    if mode == "causal":
        if suffix:
            raise BitLMError("infilling (a suffix) needs a diffusion model and mode=diffusion")
        bits = generate_bits(
            model,
            prompt,
            max_new_bytes,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            generator=generator,
            kv_cache=kv_cache,
            deadline=deadline,
        )
        return Sample(bits, 0)
    if top_p != 1.0:
        raise BitLMError("top_p applies to causal sampling; diffusion sampling uses temperature")
    result = diffusion_generate(
        model,
        prompt,
        max_new_bytes,
        suffix=suffix,
        steps=diffusion_steps,
        schedule=schedule,
        temperature=temperature,
        remask=remask,
        choice_temperature=choice_temperature,
        generator=generator,
        deadline=deadline,
    )
    return Sample(_cut_at(result.bits, stop), result.parity_repairs)


def sampling_mode(model: BitModel, mode: str | None) -> str:
    """``mode``, defaulting to the model's own; refused unless it is the model's own (a model
    samples in the mode it was trained for only)."""
    mode = mode or model.config.mode
    if mode not in MODES:
        raise BitLMError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != model.config.mode:
        raise BitLMError(
            f"this model was trained with model.mode={model.config.mode} and cannot sample in "
            f"mode={mode}; train one with model.mode={mode}"
            + (" (experiment=diffusion)" if mode == "diffusion" else "")
        )
    return mode


def _cut_at(bits: torch.Tensor, stop: bytes | None) -> torch.Tensor:
    """The frames of ``bits`` before the first occurrence of ``stop`` in their bytes."""
    if not stop:
        return bits
    data, _ = decode_bits(bits, errors="repair")
    at = data.find(stop)
    return bits if at < 0 else bits[: at * FRAME_BITS]
