"""telemetry: what leaving telemetry on costs a training step, and how fast LZ76 is.

Three Lightning fits of the same model on the same batches, alternated over ``repeats``:

* ``off``: ``module.telemetry=false`` and no ``TelemetryMonitor``;
* ``on``: the per-step K/C/S of the module (the default);
* ``every_step``: that plus the ``TelemetryMonitor`` firing at every step;
* ``instrumented``: ``on`` plus what every run also does per step: Lightning's
  ``ThroughputMonitor`` with the model FLOPs of the batch (FLOPs/s, MFU) and the ``Progress``
  line, written at every step here (its default is every 50: an upper bound).

With median step times t_off, t_on, t_every, t_instr and the default cadence N
(``every_n_steps``)::

    overhead              = (t_on − t_off) / t_off + (t_every − t_on) / (N · t_off)
    overhead_instrumented = (t_instr − t_off) / t_off + (t_every − t_on) / (N · t_off)

the per-step telemetry plus one monitor probe amortised over N steps, as a fraction of a
telemetry-free step, and the same with throughput, FLOPs and progress added. Counting the
FLOPs (once per run, on the meta device) is timed on its own (``flop_count_seconds``).
Each fit logs to its own TensorBoard directory, so writing the images and
histograms is part of the measured cost. Not in ``overhead``: the ``sample_bytes`` sample the
monitor draws after each validation, a cost per validation reported on its own
(``validation_sample``), and the validation K/C/S metrics (a few elementwise operations per
validation batch). LZ76 is timed on ``lz76_batch`` corpus sequences of ``lz76_bits`` data bits
and reported against a training step on that same batch.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from bitlm.bench.loops import TimedRun, lightning_seconds
from bitlm.bench.measure import corpus_batches, median, timings
from bitlm.core.bits import DATA_BITS, FRAME_BITS
from bitlm.data import windows
from bitlm.generation import GenerationOptions, generate_bits
from bitlm.model import build_model
from bitlm.model.config import ModelConfig
from bitlm.model.flops import batch_flops
from bitlm.telemetry.metrics import lz76_complexity
from bitlm.training.callbacks.progress import Progress
from bitlm.training.callbacks.telemetry_monitor import TelemetryMonitor


def run(
    config: ModelConfig,
    device: torch.device,
    precision: str,
    batch_size: int,
    steps: int,
    untimed_steps: int,
    every_n_steps: int,
    lz76_batch: int,
    lz76_bits: int,
    sample_bytes: int,
    repeats: int,
    seed: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    batches = corpus_batches(steps, batch_size, config.max_seq_len, seed)
    timed = TimedRun(config, batches, precision, untimed_steps, device)
    seconds = _variant_seconds(timed, every_n_steps, repeats, seed, progress)
    step = {name: median(values) for name, values in seconds.items()}
    per_step = step["on"] / step["off"] - 1
    monitor = (step["every_step"] - step["on"]) / (every_n_steps * step["off"])
    flop_count_s = median(
        timings(lambda: batch_flops(config, batch_size, config.max_seq_len, True), repeats)
    )
    lz76_s, lz76_step_s = _lz76_seconds(config, device, precision, lz76_batch, lz76_bits, repeats)
    return {
        "precision": precision,
        "batch_size": batch_size,
        "seq_len": config.max_seq_len,
        "steps": steps,
        "untimed_steps": untimed_steps,
        "every_n_steps": every_n_steps,
        "repeats": repeats,
        "step_seconds": step,
        "overhead": per_step + monitor,
        "overhead_per_step_telemetry": per_step,
        "overhead_monitor_amortised": monitor,
        "overhead_instrumented": step["instrumented"] / step["off"] - 1 + monitor,
        "flop_count_seconds": flop_count_s,
        "monitor_probe_seconds": step["every_step"] - step["on"],
        "lz76": {
            "sequences": lz76_batch,
            "data_bits": lz76_bits,
            "seconds": lz76_s,
            "training_step_seconds": lz76_step_s,
            "per_training_step": lz76_s / lz76_step_s,
        },
        "validation_sample": {
            "bytes": sample_bytes,
            "seconds": _sample_seconds(config, device, sample_bytes, repeats, seed),
        },
        "seconds": seconds,
    }


def _variant_seconds(
    timed: TimedRun,
    every_n_steps: int,
    repeats: int,
    seed: int,
    progress: Callable[[str], None],
) -> dict[str, list[float]]:
    """Seconds per training step of each variant (``off``, ``on``, ``every_step``,
    ``instrumented``), one fit each per repeat, alternated so that drift in machine speed hits
    all alike; each fit logs to its own TensorBoard directory."""
    variants = {
        "off": ({"telemetry": False}, []),
        "on": ({}, []),
        "every_step": ({}, [TelemetryMonitor(every_n_steps=1, sample_bytes=0)]),
        "instrumented": ({}, [_throughput_monitor(), Progress(every_n_steps=1, interactive=False)]),
    }
    batch_shape = (len(timed.batches[0]), timed.config.max_seq_len)
    timed_steps = len(timed.batches) - timed.untimed
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as logs:
        for repeat in range(repeats):
            for name, (module_kwargs, callbacks) in variants.items():
                progress(f"repeat {repeat + 1}/{repeats}: {name}")
                torch.manual_seed(seed)
                logger = TensorBoardLogger(logs, name=f"{name}_{repeat}")
                variant = dataclasses.replace(timed, module_kwargs=module_kwargs)
                fit_s = lightning_seconds(variant, callbacks, logger, batch_shape)
                seconds[name].append(fit_s / timed_steps)
    return seconds


def _throughput_monitor() -> ThroughputMonitor:
    """``configs/callbacks/throughput.yaml``'s monitor: bits per second, FLOPs/s, MFU."""
    return ThroughputMonitor(
        batch_size_fn=windows.batch_size, length_fn=windows.batch_bits, separator="/"
    )


def _lz76_seconds(
    config: ModelConfig,
    device: torch.device,
    precision: str,
    batch: int,
    data_bits: int,
    repeats: int,
) -> tuple[float, float]:
    """Median seconds of LZ76 over ``batch`` corpus sequences of ``data_bits`` data bits, and of
    one telemetry-free training step of the model (its context widened to fit) on that batch."""
    seq_len = data_bits // DATA_BITS * FRAME_BITS
    batches = corpus_batches(3, batch, seq_len)
    sample = batches[0].to(device)
    lz76 = median(timings(lambda: lz76_complexity(sample), repeats, device=device))
    wide = dataclasses.replace(config, max_seq_len=max(seq_len, config.max_seq_len))
    step = lightning_seconds(TimedRun(wide, batches, precision, 1, device, {"telemetry": False}))
    return lz76, step / 2


def _sample_seconds(
    config: ModelConfig, device: torch.device, n_bytes: int, repeats: int, seed: int
) -> float:
    """Median seconds of the sample the monitor draws after each validation (a cost per
    validation, not per step: set against ``trainer.val_check_interval`` steps)."""
    model = build_model(config).to(device)
    options = GenerationOptions(seed=seed)
    return median(timings(lambda: generate_bits(model, b"", n_bytes, options), repeats))
