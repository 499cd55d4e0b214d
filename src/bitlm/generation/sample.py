"""One entry point for sampling text from a bit model, in the mode it was trained for.

Causal models continue a prompt bit by bit (``generation/causal.py``: KV cache, computed parity
bits); diffusion models fill a masked span after a prompt and, for infilling, before a suffix
(``generation/diffusion.py``: iterative denoising, parity repair). Either way every frame
decodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bitlm.core.bits import FRAME_BITS, bits_to_bytes, decode_bits
from bitlm.core.errors import BitLMError
from bitlm.generation.causal import generate_many
from bitlm.generation.diffusion import Sample, diffusion_generate_many
from bitlm.generation.options import GenerationOptions, per_prompt
from bitlm.model import BitModel


def sample(
    model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions | None = None
) -> Sample:
    """Up to ``max_new_bytes`` new bytes after ``prompt`` (and before ``options.suffix``,
    diffusion only), in ``options.mode`` (default: the model's own). Causal sampling refuses
    a suffix and diffusion sampling a ``top_p`` below 1 (it has no use for one); ``kv_cache``
    applies to causal sampling only, the diffusion options to diffusion only. Both stop early at
    ``options.stop`` (for diffusion: the bytes from its first occurrence on are dropped), and
    raise ``TimeLimitExceeded`` once ``time.monotonic()`` passes ``options.deadline``."""
    return sample_many(model, [prompt], max_new_bytes, options)[0]


def sample_many(
    model: BitModel,
    prompts: Sequence[bytes],
    max_new_bytes: int,
    options: GenerationOptions | Sequence[GenerationOptions] | None = None,
) -> list[Sample]:
    """``sample`` of every prompt (``options``: one for all or one per prompt, all in one mode),
    decoded together: each prompt gets what it gets alone with its options."""
    options = per_prompt(options, prompts)
    modes = {sampling_mode(model, o.mode) for o in options}
    if len(modes) > 1:
        raise BitLMError("prompts decoded together sample in one mode")
    if modes == {"causal"}:
        if any(o.suffix for o in options):
            raise BitLMError("infilling (a suffix) needs a diffusion model and mode=diffusion")
        return [Sample(bits, 0) for bits in generate_many(model, prompts, max_new_bytes, options)]
    if any(o.top_p != 1.0 for o in options):
        raise BitLMError("top_p applies to causal sampling; diffusion sampling uses temperature")
    results = diffusion_generate_many(model, prompts, max_new_bytes, options)
    return [
        Sample(_cut_at(r.bits, o.stop), r.parity_repairs)
        for r, o in zip(results, options, strict=True)
    ]


def generate(
    model: BitModel, prompt: bytes, max_new_bytes: int, options: GenerationOptions | None = None
) -> bytes:
    """``sample``'s bytes (strictly decoded: a parity failure would raise)."""
    return bits_to_bytes(sample(model, prompt, max_new_bytes, options).bits)


def sampling_mode(model: BitModel, mode: str | None) -> str:
    """``mode`` (one of ``GenerationOptions``' modes, or None), defaulting to the model's own;
    refused unless it is the model's own (a model samples in the mode it was trained for
    only)."""
    mode = mode or model.config.mode
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
