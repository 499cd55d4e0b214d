"""bitlm-train: fit a BitTransformerLM from the Hydra config (see configs/train.yaml)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from bitlm.cli.app import hydra_app
from bitlm.errors import BitLMError


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build data, module, callbacks, loggers and trainer from ``cfg``; fit; validate the final
    weights; return a summary for the JSON line."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module, _convert_="all")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg.ckpt_path, output_dir))
    final = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {
        "run_dir": str(output_dir),
        "steps": trainer.global_step,
        "val_bpb": final[0]["val/bpb"] if final else None,
        "parameters": module.model.num_parameters(),
        "checkpoint": _existing(output_dir / "checkpoints" / "last.ckpt"),
        "model_dir": _existing(output_dir / "model"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``None`` → fresh start; ``last`` → <run dir>/checkpoints/last.ckpt; else that file."""
    if ckpt_path is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
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
