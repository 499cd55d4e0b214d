"""bitlm-train: fit a BitTransformerLM from the Hydra config (see configs/train.yaml)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from bitlm.bits import FRAME_BITS
from bitlm.cli.app import hydra_app
from bitlm.errors import BitLMError
from bitlm.lit.module import FINAL_STEP_KEY


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build module, data, callbacks, loggers and trainer from ``cfg``; fit (the callbacks save
    ``last.ckpt`` and export the model); validate the final weights; return a summary for the
    JSON line."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    module = instantiate(cfg.module, _convert_="all")  # first: model config errors come first
    datamodule = instantiate(cfg.data, _convert_="all")
    if datamodule.hparams.seq_len > module.model.config.max_seq_len:
        raise BitLMError(
            f"data.seq_len={datamodule.hparams.seq_len} is longer than the model's context "
            f"(model.max_seq_len={module.model.config.max_seq_len})"
        )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        precision=resolve_precision(cfg.trainer.precision),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg.ckpt_path, output_dir))
    # the training processes' step count (under ddp_spawn this process never stepped)
    steps = int(trainer.callback_metrics.get(FINAL_STEP_KEY, trainer.global_step))
    final = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {
        "run_dir": str(output_dir),
        "steps": steps,
        "train_bytes": _bytes_read(trainer, datamodule, steps),
        "val_bpb": final[0]["val/bpb"] if final else None,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "checkpoint": _existing(output_dir / "checkpoints" / "last.ckpt"),
        "model_dir": _existing(output_dir / "model"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _bytes_read(trainer: L.Trainer, datamodule: L.LightningDataModule, steps: int) -> int:
    """Bytes of training text read: every optimizer step reads ``accumulate_grad_batches``
    batches of ``batch_size`` windows of ``seq_len / 9`` bytes on each of ``world_size`` ranks."""
    windows = steps * trainer.accumulate_grad_batches * trainer.world_size
    return windows * datamodule.hparams.batch_size * (datamodule.hparams.seq_len // FRAME_BITS)


def resolve_precision(precision: str) -> str:
    """``auto`` → ``bf16-mixed`` where bf16 is fast (a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 / AMX), else ``32-true``; any other value is passed to Lightning unchanged."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if _cpu_has_fast_bf16() else "32-true"


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, and fp32 is always correct
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``None`` → fresh start; ``last`` → <run dir>/checkpoints/last.ckpt; else that path (a
    file, or the folder of a sharded checkpoint)."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():
        hint = (
            " (ckpt_path=last needs the same hydra.run.dir as the run)"
            if ckpt_path == "last"
            else ""
        )
        raise BitLMError(f"checkpoint to resume from not found: {path}{hint}")
    return str(path)


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


main = hydra_app("train", train)

if __name__ == "__main__":
    main()
