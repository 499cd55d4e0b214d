"""bitlm-bench: speed and memory benchmarks, one JSON line each (see configs/bench.yaml)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from bitlm.app.failures import fail
from bitlm.app.hydra import hydra_app
from bitlm.bench import (
    attention,
    codec,
    compare,
    data,
    generation,
    memory,
    rle,
    telemetry,
    throughput,
)
from bitlm.bench.measure import machine
from bitlm.bench.plots import FIGURES
from bitlm.core.errors import BitLMError
from bitlm.core.files import write_atomic
from bitlm.core.runtime import pick_device
from bitlm.training.precision import resolve_precision


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _train_throughput(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "batch_size", "steps", "repeats")
    if not 0 <= cfg.untimed_steps < cfg.steps:
        raise BitLMError(
            f"untimed_steps must be in [0, steps={cfg.steps}), got {cfg.untimed_steps}"
        )
    return throughput.run(
        instantiate(cfg.model),
        pick_device(cfg.device),
        list(cfg.precisions),
        cfg.batch_size,
        cfg.steps,
        cfg.untimed_steps,
        cfg.repeats,
        cfg.seed,
        cfg.mode,
        list(cfg.contexts),
        list(cfg.units),
    )


def _memory(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "batch_size", "repeats")
    _check_nonempty(cfg, "depths", "stacks")
    return memory.run(
        instantiate(cfg.model),
        pick_device(cfg.device),
        list(cfg.depths),
        list(cfg.stacks),
        cfg.batch_size,
        cfg.repeats,
        cfg.seed,
        _progress,
    )


def _attention(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "chunk_size", "batch_size", "repeats")
    _check_nonempty(cfg, "lengths")
    return attention.run(
        instantiate(cfg.model),
        pick_device(cfg.device),
        list(cfg.lengths),
        cfg.chunk_size,
        cfg.batch_size,
        cfg.repeats,
        cfg.seed,
        _progress,
    )


def _generate(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "new_bytes", "repeats")
    _check_nonempty(cfg, "contexts", "batch_sizes")
    if not all(isinstance(b, int) and b >= 1 for b in cfg.batch_sizes):
        raise BitLMError(f"batch_sizes must be positive integers, got {list(cfg.batch_sizes)}")
    return generation.run(
        instantiate(cfg.model),
        pick_device(cfg.device),
        list(cfg.contexts),
        cfg.new_bytes,
        cfg.repeats,
        cfg.seed,
        list(cfg.batch_sizes),
        cfg.uncached,
        _progress,
    )


def _codec(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "n_bytes", "reference_bytes", "repeats")
    return codec.run(cfg.n_bytes, min(cfg.reference_bytes, cfg.n_bytes), cfg.repeats)


def _rle(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "n_bytes", "reference_bytes", "repeats")
    return rle.run(cfg.n_bytes, min(cfg.reference_bytes, cfg.n_bytes), cfg.repeats)


def _prepare(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "n_bytes", "repeats")
    return data.run_prepare(cfg.n_bytes, cfg.repeats, _progress)


def _dataloader(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "n_bytes", "batch_size", "loader_batches", "steps", "repeats")
    if cfg.loader_batches < cfg.steps + 2:
        raise BitLMError(f"loader_batches must be at least steps + 2 = {cfg.steps + 2}")
    return data.run_dataloader(
        instantiate(cfg.model),
        pick_device(cfg.device),
        resolve_precision(cfg.precision),
        cfg.batch_size,
        cfg.n_bytes,
        cfg.loader_batches,
        cfg.steps,
        cfg.num_workers,
        cfg.repeats,
        _progress,
    )


def _telemetry(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "batch_size", "steps", "every_n_steps", "lz76_batch", "lz76_bits")
    _check_positive(cfg, "sample_bytes", "repeats")
    if not 0 <= cfg.untimed_steps < cfg.steps:
        raise BitLMError(
            f"untimed_steps must be in [0, steps={cfg.steps}), got {cfg.untimed_steps}"
        )
    return telemetry.run(
        instantiate(cfg.model),
        pick_device(cfg.device),
        resolve_precision(cfg.precision),
        cfg.batch_size,
        cfg.steps,
        cfg.untimed_steps,
        cfg.every_n_steps,
        cfg.lz76_batch,
        cfg.lz76_bits,
        cfg.sample_bytes,
        cfg.repeats,
        cfg.seed,
        _progress,
    )


def _compare(cfg: DictConfig) -> dict[str, Any]:
    _check_positive(cfg, "budget_s", "probe_steps", "probe_rounds", "val_checks", "eval_batch_size")
    if not 0 < cfg.fill <= 1:
        raise BitLMError(f"fill must be in (0, 1], got {cfg.fill}")
    return compare.run(
        compare.parse_variants(list(cfg.variants)),
        list(cfg.seeds),
        float(cfg.budget_s),
        list(cfg.eval_files),
        cfg.out_dir,
        list(cfg.common_overrides),
        cfg.fill,
        cfg.probe_steps,
        cfg.probe_rounds,
        cfg.val_checks,
        cfg.eval_batch_size,
        _progress,
    )


BENCHMARKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "train-throughput": _train_throughput,
    "memory": _memory,
    "attention": _attention,
    "generate": _generate,
    "codec": _codec,
    "rle": _rle,
    "prepare": _prepare,
    "dataloader": _dataloader,
    "compare": _compare,
    "telemetry": _telemetry,
}


def _check_nonempty(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        if not cfg[key]:
            raise BitLMError(f"{key} must be a non-empty list, e.g. {key}=[…]")


def _check_positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise BitLMError(f"{key} must be a positive number, got {value!r}")


def bench(cfg: DictConfig) -> dict[str, Any]:
    name = HydraConfig.get().runtime.choices["benchmark"]
    if cfg.plot and name not in FIGURES:
        raise BitLMError(f"plot= is for {', '.join(FIGURES)}; {name} reports numbers only")
    torch.manual_seed(cfg.seed)
    result = {"benchmark": name, **BENCHMARKS[name](cfg), "machine": machine()}
    if cfg.output:
        write_atomic(cfg.output, (json.dumps(result) + "\n").encode())
    if cfg.plot:
        FIGURES[name](result, cfg.plot)
    return result


_app = hydra_app("bench", bench)


def main() -> None:
    """``bitlm-bench NAME [overrides]`` → the Hydra app with ``benchmark=NAME``."""
    args = sys.argv[1:]
    if args and not args[0].startswith("-") and "=" not in args[0]:
        if args[0] not in BENCHMARKS:
            fail(f"unknown benchmark {args[0]!r}: choose one of {', '.join(BENCHMARKS)}")
        sys.argv[1:] = [f"benchmark={args[0]}", *args[1:]]
    elif not any(a.startswith(("-", "benchmark=")) for a in args):
        fail(f"which benchmark? usage: bitlm-bench {{{','.join(BENCHMARKS)}}} [key=value ...]")
    _app()


if __name__ == "__main__":
    main()
