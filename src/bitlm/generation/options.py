"""How to sample: one frozen value that every generating entry point takes, so that a setting
is named, defaulted and checked in one place instead of being threaded keyword by keyword
through ``generate_bits``, ``sample``, ``safe_sample_with_retry`` and ``generate_text``.

A sample is a function of the model, the prompt, ``max_new_bytes`` and these options: the
random draws come from generators seeded with ``seed`` (causal: the sequence's own CPU stream,
``draws.RowRandom``; diffusion: ``generator`` on the model's device), so the same options give
the same bits, whichever sequences are decoded beside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bitlm.core.errors import BitLMError

MODES = ("causal", "diffusion")


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings, validated on construction (``BitLMError`` naming the bad one).

    Both modes: ``temperature`` (0 = greedy), ``stop`` (end the output before the first
    occurrence of these bytes), ``seed``, ``deadline`` (a ``time.monotonic()`` value: raise
    ``TimeLimitExceeded`` once past it) and ``mode`` (None: the model's own; a model samples in
    no other). Causal only: ``top_p`` (keep the likelier bit alone when it holds at least this
    much probability) and ``kv_cache`` (False re-encodes the whole context for every bit: the
    slow reference the cache is measured against). Diffusion only: ``suffix`` (infilling: the
    text after the generated span), ``diffusion_steps`` (denoising passes per window),
    ``schedule`` (None: the model's ``noise_schedule``), ``remask`` and ``choice_temperature``
    (``generation/diffusion.py``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    stop: bytes | None = None
    seed: int = 0
    deadline: float | None = None
    mode: str | None = None
    kv_cache: bool = True
    suffix: bytes = b""
    diffusion_steps: int = 16
    schedule: str | None = None
    remask: bool = False
    choice_temperature: float = 1.0

    def __post_init__(self) -> None:
        if not is_number(self.diffusion_steps, int) or self.diffusion_steps < 1:
            raise BitLMError(
                f"diffusion_steps must be a positive integer, got {self.diffusion_steps!r}"
            )
        for key in ("temperature", "top_p", "choice_temperature"):
            value = getattr(self, key)
            if not is_number(value, (int, float)) or not math.isfinite(value):
                raise BitLMError(f"{key} must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise BitLMError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise BitLMError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.choice_temperature >= 0:
            raise BitLMError(f"choice_temperature must be >= 0, got {self.choice_temperature}")
        if not is_number(self.seed, int):
            raise BitLMError(f"seed must be an integer, got {self.seed!r}")
        if self.mode and self.mode not in MODES:
            raise BitLMError(f"mode must be one of {MODES}, got {self.mode!r}")

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator on ``device`` seeded with ``seed``: where every random draw of one
        sample comes from."""
        return torch.Generator(device).manual_seed(self.seed)


def per_prompt(
    options: GenerationOptions | Sequence[GenerationOptions] | None, prompts: Sequence[bytes]
) -> list[GenerationOptions]:
    """One options value per prompt: ``options`` repeated when it is one (None: the defaults)."""
    options = options or GenerationOptions()
    if isinstance(options, GenerationOptions):
        return [options] * len(prompts)
    if len(options) != len(prompts):
        raise BitLMError(f"{len(options)} options for {len(prompts)} prompts")
    return list(options)


def is_number(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """``isinstance(value, kinds)``, booleans excluded (``diffusion_steps=true`` is no count)."""
    return isinstance(value, kinds) and not isinstance(value, bool)
