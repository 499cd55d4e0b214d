"""bitlm-train: fit a BitTransformerLM from the Hydra config (see configs/train.yaml)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import BitLMError
from bitlm.core.files import remove_stale_temporaries
from bitlm.io import checkpoint_step, load_model
from bitlm.training.callbacks.progress import bytes_per_step
from bitlm.training.module import FINAL_STEP_KEY
from bitlm.training.precision import resolve_precision, set_matmul_precision
from bitlm.training.protocols import GrowsContext


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build module, data, callbacks, loggers and trainer from ``cfg``; fit (the callbacks save
    ``last.ckpt`` and export the model); validate the final weights; return a summary for the
    JSON line."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    set_matmul_precision(cfg.float32_matmul_precision)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if rank_zero_only.rank == 0:  # before any process of this run writes
        _remove_leftovers(output_dir)
    ckpt_path = requeue_default(cfg.ckpt_path)
    source = resume_path(ckpt_path, output_dir)
    if cfg.finetune and (source is None or ckpt_path == "auto"):
        raise BitLMError("finetune=true starts from ckpt_path=MODEL (a .ckpt or exported folder)")
    if source is not None and not cfg.finetune:
        _check_resumable(source, cfg.trainer.max_steps, finished_ok=ckpt_path == "auto")
    module, datamodule, trainer = _build(cfg, source)
    old_context = load_model(source).config.max_seq_len if cfg.finetune else None
    extended = cfg.finetune and old_context < module.model.config.max_seq_len
    if extended:
        evaluator = _evaluator(cfg, trainer)
        before = _bpb_by_context(evaluator, module, datamodule, old_context)
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if cfg.finetune else source)
    # the training processes' step count (under ddp_spawn this process never stepped)
    steps = int(trainer.callback_metrics.get(FINAL_STEP_KEY, trainer.global_step))
    final = trainer.validate(module, datamodule=datamodule, verbose=False)
    summary = _summary(output_dir, steps, trainer, module, datamodule, final)
    if torch.cuda.is_initialized():  # this process's GPU high-water mark, for sizing runs
        summary["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    if extended:  # context extension: val bpb at the source's and the new context length
        summary["val_bpb_by_context"] = {
            "before": before,
            "after": _bpb_by_context(evaluator, module, datamodule, old_context),
        }
    return summary | {"seconds": round(time.perf_counter() - started, 1)}


def _build(
    cfg: DictConfig, source: str | None
) -> tuple[L.LightningModule, L.LightningDataModule, L.Trainer]:
    """Module (first: model config errors come first), data, callbacks, loggers and trainer;
    the data windows must fit the context the model may grow to."""
    init = {"init_from": source} if cfg.finetune else {}
    module = instantiate(cfg.module, _convert_="all", **init)
    datamodule = instantiate(cfg.data, _convert_="all")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    context = max([module.model.config.max_seq_len] + [_context_limit(c) for c in callbacks])
    if datamodule.hparams.seq_len > context:
        raise BitLMError(
            f"data.seq_len={datamodule.hparams.seq_len} is longer than the model's context "
            f"(model.max_seq_len={context})"
        )
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        precision=resolve_precision(cfg.trainer.precision),
        **training_length(cfg.trainer),
    )
    return module, datamodule, trainer


def _evaluator(cfg: DictConfig, trainer: L.Trainer) -> L.Trainer:
    """A trainer of its own for validations around a context extension (validating with the
    run's trainer would close its loggers)."""
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )


def _summary(
    output_dir: Path,
    steps: int,
    trainer: L.Trainer,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    final: list[dict[str, float]],
) -> dict[str, Any]:
    """The JSON line's figures of a finished run."""
    return {
        "run_dir": str(output_dir),
        "steps": steps,
        "train_bytes": steps * bytes_per_step(trainer, datamodule),
        "val_bpb": final[0]["val/bpb"] if final else None,
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "checkpoint": _existing(output_dir / "checkpoints" / "last.ckpt"),
        "model_dir": _existing(output_dir / "model"),
    }


def _remove_leftovers(output_dir: Path) -> None:
    """Delete the temporary files and staging folders of saves an earlier, killed process of
    this run left in its run dir (``bitlm.core.files.remove_stale_temporaries``)."""
    for folder in (output_dir, output_dir / "checkpoints"):
        for path in remove_stale_temporaries(folder):
            rank_zero_info(f"removed {path}, left by an interrupted save")


def _check_resumable(source: str, max_steps: int, finished_ok: bool = False) -> None:
    """The checkpoint reads whole, holds finite weights, and has steps left to train. Under
    ``ckpt_path=auto`` a checkpoint at ``max_steps`` is a finished run, not a mistake: a job
    requeued after its training ended (preempted in the final validation) or a command run
    again; the fit then trains nothing, and the final validation reports the run."""
    try:
        step = checkpoint_step(source)
    except BitLMError as err:
        others = sorted(Path(source).parent.glob("best-step*.ckpt"))
        hint = f"; to resume from the best one: ckpt_path={others[-1]}" if others else ""
        raise BitLMError(f"cannot resume: {err}{hint}") from err
    if 0 <= max_steps <= step:
        if not finished_ok:
            raise BitLMError(
                f"{source} is at step {step}, already at trainer.max_steps={max_steps}: nothing "
                "to train; pass a larger trainer.max_steps to train on"
            )
        rank_zero_info(f"ckpt_path=auto: {source} is at step {step}: the run is finished")


def _context_limit(callback: L.Callback) -> int:
    """The context a callback may grow the model to (``GrowsContext``: adaptive expansion),
    else 0."""
    return (isinstance(callback, GrowsContext) and callback.context_limit) or 0


def _bpb_by_context(
    trainer: L.Trainer, module: L.LightningModule, datamodule, short: int
) -> dict[str, float]:
    """Validation bpb of ``module`` on the first ``short`` bits of each window and on all
    ``max_seq_len`` of them, keyed by the length in bits."""
    result = {}
    for length in (short, module.model.config.max_seq_len):
        module.val_context = length
        result[str(length)] = trainer.validate(module, datamodule=datamodule, verbose=False)[0][
            "val/bpb"
        ]
    module.val_context = None
    return result


def training_length(trainer: DictConfig) -> dict[str, int]:
    """With no ``max_steps``, ``max_epochs`` or ``max_time``, one pass over the training
    windows (``max_epochs=1``), where Lightning would run 1 000 epochs; else nothing to add."""
    unset = trainer.max_steps == -1 and trainer.max_epochs is None
    return {"max_epochs": 1} if unset and trainer.get("max_time") is None else {}


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``None`` → fresh start; ``auto`` → <run dir>/checkpoints/last.ckpt if it exists, else a
    fresh start; ``last`` → that file, which must exist; else that path (a file, or the folder
    of a sharded checkpoint)."""
    if ckpt_path is None:
        return None
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "auto":
        if last.exists():
            rank_zero_info(f"ckpt_path=auto: resuming from {last}")
            return str(last)
        rank_zero_info(f"ckpt_path=auto: no {last} yet, starting fresh")
        return None
    path = last if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():
        hint = (
            " (ckpt_path=last needs the same hydra.run.dir as the run)"
            if ckpt_path == "last"
            else ""
        )
        raise BitLMError(f"checkpoint to resume from not found: {path}{hint}")
    return str(path)


def requeue_default(ckpt_path: str | None) -> str | None:
    """``ckpt_path``, except that ``null`` means ``auto`` in a job SLURM requeued
    (``SLURM_RESTART_COUNT`` ≥ 1: after a preemption, or a time limit under submitit, whose
    requeue repeats the command line): a requeued job starting again from step 0 over its own
    run is never what anyone wants."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if ckpt_path is not None or restarts == 0:
        return ckpt_path
    rank_zero_info(f"SLURM_RESTART_COUNT={restarts}: a requeued job resumes as ckpt_path=auto")
    return "auto"


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


main = hydra_app("train", train)

if __name__ == "__main__":
    main()
