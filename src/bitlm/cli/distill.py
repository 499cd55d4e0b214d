"""bitlm-distill: collapse a trained model into a smaller one (see bitlm.training.distill)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import BitLMError
from bitlm.core.runtime import pick_device
from bitlm.data import collate_bits
from bitlm.io import load_model
from bitlm.training.distill import collapse_submodel, save_distilled_model


def distill(cfg: DictConfig) -> dict[str, Any]:
    """Draw a pool of training windows and the validation windows of ``data`` at the teacher's
    context, distil, save the student folder with metrics.json; summarise it."""
    if cfg.pool < 1 or cfg.val_windows < 1:
        raise BitLMError("pool and val_windows must be positive")
    device = pick_device(cfg.device)
    teacher = load_model(cfg.teacher).to(device)
    datamodule = instantiate(cfg.data, seq_len=teacher.config.max_seq_len, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    generator = torch.Generator().manual_seed(cfg.seed)
    train, val = datamodule.train_set, datamodule.val_set
    picked = torch.randperm(len(train), generator=generator)[: cfg.pool].tolist()
    pool = collate_bits([train[i] for i in picked]).to(device)
    val_bits = collate_bits([val[i] for i in range(min(cfg.val_windows, len(val)))]).to(device)
    result = collapse_submodel(
        teacher,
        pool,
        cfg.target_params,
        dict(cfg.floors),
        cfg.max_rounds,
        cfg.width_scale,
        val_data=val_bits,
        n_sequences=cfg.n_sequences,
        steps_per_round=cfg.steps_per_round,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        seed=cfg.seed,
        trainer_options={"accelerator": device.type, "devices": 1},
    )
    out_dir = Path(cfg.out_dir or Path(HydraConfig.get().runtime.output_dir) / "distilled")
    save_distilled_model(result, out_dir)
    return {
        "model_dir": str(out_dir),
        "rounds": len(result.rounds),
        "floors_met": result.floors_met,
        "student": result.metrics,
        "teacher": result.teacher,
    }


main = hydra_app("distill", distill)

if __name__ == "__main__":
    main()
