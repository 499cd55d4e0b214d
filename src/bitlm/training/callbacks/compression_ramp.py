"""Compression ramp: move the share of training batches read run-length coded over training."""

from __future__ import annotations

from bitlm.training.callbacks.schedule import StepSchedule


class CompressionRamp(StepSchedule):
    """Sets ``Knobs.compress_prob``, the probability that a training batch is run-length
    coded and read through ``forward_compressed`` (``bitlm.core.rle``), before every batch:
    from ``start`` to ``end`` over ``steps`` optimiser steps along the original's cosine ramp
    ``start + (end − start)·(1 − cos(π·step/steps))/2`` (``StepSchedule``; ``shape=linear``
    too). Logged as ``train/compress_prob``; exact on resume.
    """

    knob = "compress_prob"
    refusal = (
        "the compression ramp feeds run-length coded batches to a causal bit model: "
        "drop the compression_ramp callback for this model"
    )
    bounds = (0.0, 1.0, True)

    def __init__(
        self, start: float = 0.0, end: float = 0.5, shape: str = "cosine", steps: int | None = None
    ) -> None:
        super().__init__(start, end, shape, steps)
