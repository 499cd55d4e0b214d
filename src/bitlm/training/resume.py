"""Exact resume and growth across checkpoints: per-step seeding, the architecture check, the
settings a resumed run changes, and models started from (and grown out of) a trained one."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from bitlm.core.errors import BitLMError
from bitlm.io import load_model, quantization_of
from bitlm.model.config import ModelConfig
from bitlm.model.expand import ADJUSTABLE, GROWABLE, grow_to


def step_seed(run_seed: int, global_batch: int, rank: int) -> int:
    """The seed of the global RNG for ``global_batch`` on ``rank``: ``SeedSequence`` mixes the
    three, so neighbouring batches get unrelated streams and a resumed run the same ones."""
    sequence = np.random.SeedSequence([run_seed, global_batch, rank])
    return int(sequence.generate_state(1, np.uint64)[0])


def grown_from(path: str, config: ModelConfig) -> torch.nn.Module:
    """The float model at ``path`` (a .ckpt or an exported folder) grown to ``config``, in
    train mode (a loaded model comes in eval mode, which Lightning would keep)."""
    if quantization_of(path):
        raise BitLMError(
            f"module.init_from={path} is a quantized export; start from the float model "
            "(<run dir>/model or a .ckpt)"
        )
    return grow_to(load_model(path), config).model.train()


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with no trainable parameters (a reference model)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def grown_config(saved: Mapping[str, Any] | None, current: ModelConfig) -> ModelConfig:
    """``current`` with the sizes (``GROWABLE``) of the checkpoint's ``saved`` model config: the
    architecture a run that grew must rebuild before its weights load. This run's
    ``ADJUSTABLE`` settings (dropout, …) stay."""
    if saved is None:
        return current
    return dataclasses.replace(current, **{n: saved[n] for n in GROWABLE if n in saved})


def check_same_architecture(trained: ModelConfig, given: ModelConfig) -> None:
    """A resume must be given the model the checkpoint was trained from (settings in
    ``ADJUSTABLE``, such as dropout, may change); ``BitLMError`` naming both otherwise."""
    changed = [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.name not in ADJUSTABLE and getattr(trained, f.name) != getattr(given, f.name)
    ]
    if changed:
        was = ", ".join(f"{n}={getattr(trained, n)}" for n in changed)
        now = ", ".join(f"{n}={getattr(given, n)}" for n in changed)
        raise BitLMError(
            f"the checkpoint was trained with model {was}, this run's model has {now}: resume "
            "with the model it was trained with (the same model=… and model.* options), or "
            "start a new run from it with finetune=true (which can grow it)"
        )


def log_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "module"
) -> None:
    """One log line per module setting this run changes from the checkpoint's (nested
    settings, such as the optimiser's, one line per leaf)."""
    for name in sorted(set(saved) & set(current) - {"model", "init_from"}):
        was, now = saved[name], current[name]
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            log_changes(was, now, f"{prefix}.{name}")
        elif was != now and not _same_sequence(was, now):
            rank_zero_info(f"resume: {prefix}.{name}={now!r} (the checkpoint had {was!r})")


def _same_sequence(a: Any, b: Any) -> bool:
    """``[0.9, 0.95]`` and ``(0.9, 0.95)`` are the same betas."""
    sequences = (list, tuple)
    return isinstance(a, sequences) and isinstance(b, sequences) and list(a) == list(b)
