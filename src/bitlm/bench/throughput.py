"""train-throughput: what a training step costs.

``mode=lightning``: what Lightning costs. The same model, data, optimiser and schedule, trained
by ``Trainer.fit`` on a ``BitLMModule`` and by a plain PyTorch loop; overhead = 1 − ratio of
their steady-state rates (steps after the warm-up ones).

``mode=stacks``: what the reversible stack and the bit model cost. The plain loop's step
(autocast forward, the module's loss, backward, AdamW, schedule) of the configured bit model and
of the byte-level baseline of the same shape, each with the plain and the reversible stack, at
each context length; the four take one step each in turn (A B C D, then D C B A, …) so that drift
in machine speed hits them alike, and every ratio is the median over rounds of the per-round
ratio of step times.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from bitlm.bench.loops import (
    PRECISIONS,
    TimedRun,
    lightning_seconds,
    plain_seconds,
    plain_step,
    utilisation,
)
from bitlm.bench.measure import corpus_batches, median, synchronize
from bitlm.bench.memory import STACKS as STACK_FIELDS
from bitlm.core.errors import BitLMError
from bitlm.model.config import ModelConfig

UNITS = ("bit", "byte")
"""``mode=stacks``: the configured bit model and the byte-level baseline of its shape."""
STACKS = ("plain", "reversible")
"""``mode=stacks``: the stacks compared (their fields: ``bitlm.bench.memory.STACKS``)."""


def run(
    config: ModelConfig,
    device: torch.device,
    precisions: list[str],
    batch_size: int,
    steps: int,
    untimed_steps: int,
    repeats: int,
    seed: int,
    mode: str,
    contexts: list[int],
    units: list[str],
) -> dict[str, Any]:
    """``mode=lightning``: :func:`lightning_overhead`; ``mode=stacks``: :func:`stack_costs` at
    ``contexts`` bytes for ``units`` (``repeats`` unused: every timed step is one repeat)."""
    unsupported = sorted(set(precisions) - set(PRECISIONS))
    if unsupported:
        raise BitLMError(f"precisions {unsupported} not supported here: use {list(PRECISIONS)}")
    if mode == "stacks":
        return stack_costs(
            config, device, precisions, batch_size, steps, untimed_steps, contexts, units, seed
        )
    if mode != "lightning":
        raise BitLMError(f"mode must be 'lightning' or 'stacks', got {mode!r}")
    return lightning_overhead(
        config, device, precisions, batch_size, steps, untimed_steps, repeats, seed
    )


def lightning_overhead(
    config: ModelConfig,
    device: torch.device,
    precisions: list[str],
    batch_size: int,
    steps: int,
    untimed_steps: int,
    repeats: int,
    seed: int,
) -> dict[str, Any]:
    """Median positions/s and bytes/s of both loops per precision, and the overhead.

    Positions are what the main stack runs over: 9 per byte for the flat bit model, 1 for the
    hierarchical trunk and the byte model.
    The module's own defaults (learning rate, warm-up, …) apply to both loops.
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per fit
    batches = corpus_batches(steps, batch_size, config.max_seq_len, seed)
    n_bytes = (steps - untimed_steps) * batch_size * config.max_bytes
    positions_per_byte = config.trunk_positions // config.max_bytes
    results = {}
    for precision in precisions:
        seconds: dict[str, list[float]] = {"lightning": [], "plain": []}
        run = TimedRun(config, batches, precision, untimed_steps, device)
        for _ in range(repeats):  # alternate, so drift in machine speed hits both alike
            for name, loop in (("lightning", lightning_seconds), ("plain", plain_seconds)):
                torch.manual_seed(seed)
                seconds[name].append(loop(run))
        bytes_per_s = {name: n_bytes / median(s) for name, s in seconds.items()}
        steps_per_s = bytes_per_s["lightning"] / (batch_size * config.max_bytes)
        results[precision] = {
            **{
                name: {"positions_per_s": rate * positions_per_byte, "bytes_per_s": rate}
                for name, rate in bytes_per_s.items()
            },
            **utilisation(config, batch_size, steps_per_s, device, precision),
            "overhead": 1.0 - bytes_per_s["lightning"] / bytes_per_s["plain"],
            "seconds": seconds,
        }
    return {
        "repeats": repeats,
        "batch_size": batch_size,
        "seq_len": config.max_seq_len,
        "steps": steps,
        "untimed_steps": untimed_steps,
        "results": results,
    }


def stack_costs(
    config: ModelConfig,
    device: torch.device,
    precisions: list[str],
    batch_size: int,
    steps: int,
    untimed_steps: int,
    contexts: list[int],
    units: list[str],
    seed: int,
) -> dict[str, Any]:
    """Step cost of each unit × stack per precision and context (bytes; model.max_seq_len
    = 9 × bytes): ms per step and bytes/s (medians over the timed rounds) and the ratios
    reversible / plain per unit and bit / byte per stack (medians of per-round ratios)."""
    if not contexts or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in contexts
    ):
        raise BitLMError(f"contexts must be a non-empty list of byte counts, got {contexts}")
    if not units or set(units) - set(UNITS):
        raise BitLMError(f"units must be a non-empty subset of {list(UNITS)}, got {units}")
    results = {
        precision: {
            str(n): _context_costs(
                config, device, precision, batch_size, steps, untimed_steps, n, units, seed
            )
            for n in contexts
        }
        for precision in precisions
    }
    return {
        "mode": "stacks",
        "batch_size": batch_size,
        "steps": steps,
        "untimed_steps": untimed_steps,
        "d_model": config.d_model,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "results": results,
    }


def _context_costs(
    config: ModelConfig,
    device: torch.device,
    precision: str,
    batch_size: int,
    steps: int,
    untimed: int,
    n_bytes: int,
    units: list[str],
    seed: int,
) -> dict[str, Any]:
    """The interleaved rounds at one context: each variant steps once per round on the round's
    batch, in A B C D order on even rounds and D C B A on odd ones. On the CPU the process's
    CPU time is kept too: unlike wall-clock it does not count time the scheduler gave to other
    jobs on a shared machine (one thread: ``OMP_NUM_THREADS=1``, else it sums the threads)."""
    batches = corpus_batches(steps, batch_size, 9 * n_bytes, seed)
    models, loops = {}, {}
    variants = _stack_variants(config, n_bytes, units)
    for name, variant in variants.items():
        torch.manual_seed(seed)
        models[name], loops[name] = plain_step(variant, precision, steps, device, {})
    clocks = {"seconds": time.perf_counter}
    if device.type == "cpu":
        clocks["cpu_seconds"] = time.process_time
    times = {clock: {name: [] for name in loops} for clock in clocks}
    for index, batch in enumerate(batches):
        for name in list(loops) if index % 2 == 0 else list(loops)[::-1]:
            took = _timed(functools.partial(loops[name], batch), device, clocks)
            if index >= untimed:
                for clock, seconds in took.items():
                    times[clock][name].append(seconds)
    rows = {
        name: {
            "bytes_per_s": batch_size * n_bytes / median(times["seconds"][name]),
            **utilisation(
                variants[name], batch_size, 1 / median(times["seconds"][name]), device, precision
            ),
            **{c.replace("seconds", "ms_per_step"): 1e3 * median(times[c][name]) for c in clocks},
            "parameters": sum(p.numel() for p in model.parameters()),
            **{clock: times[clock][name] for clock in clocks},
        }
        for name, model in models.items()
    }
    return {
        "variants": rows,
        **{clock.replace("seconds", "ratios"): _stack_ratios(times[clock]) for clock in clocks},
    }


def _timed(
    fn: Callable[[], None], device: torch.device, clocks: dict[str, Callable[[], float]]
) -> dict[str, float]:
    """Seconds ``fn()`` took on each clock, the device's queued work included."""
    synchronize(device)
    start = {clock: read() for clock, read in clocks.items()}
    fn()
    synchronize(device)
    return {clock: read() - start[clock] for clock, read in clocks.items()}


def _stack_variants(config: ModelConfig, n_bytes: int, units: list[str]) -> dict[str, ModelConfig]:
    """``"<model>/<stack>"`` → its config at ``n_bytes`` of context: the bit model as configured
    (``<model>`` is its trunk) and the byte baseline of the same shape (``byte_baseline``)."""
    variants = {}
    for unit in (u for u in UNITS if u in units):
        shape = {"unit": unit, "max_seq_len": 9 * n_bytes}
        if unit == "byte":
            shape["trunk"] = "flat"
        label = config.trunk if unit == "bit" else "byte_baseline"
        for stack in STACKS:
            fields = {**shape, **STACK_FIELDS[stack]}
            variants[f"{label}/{stack}"] = dataclasses.replace(config, **fields)
    return variants


def _stack_ratios(seconds: dict[str, list[float]]) -> dict[str, float]:
    """``"<model>: reversible/plain"`` per model and ``"<bit model>/byte_baseline: <stack>"`` per
    stack: medians of the per-round ratios of step times (paired rounds cancel slow drift)."""

    def paired(a: str, b: str) -> float:
        return median([x / y for x, y in zip(seconds[a], seconds[b], strict=True)])

    models = sorted({name.split("/")[0] for name in seconds})
    ratios = {f"{m}: reversible/plain": paired(f"{m}/reversible", f"{m}/plain") for m in models}
    bit = [m for m in models if m != "byte_baseline"]
    if bit and "byte_baseline" in models:
        for stack in STACKS:
            ratios[f"{bit[0]}/byte_baseline: {stack}"] = paired(
                f"{bit[0]}/{stack}", f"byte_baseline/{stack}"
            )
    return ratios
