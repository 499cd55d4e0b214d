"""bitlm-prepare: text files, folders, globs or a Hugging Face dataset → a prepared data folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import BitLMError
from bitlm.data.prepare import file_sources, hf_source, prepare


def prepare_data(cfg: DictConfig) -> dict[str, Any]:
    """Resolve the inputs, write the folder (``bitlm.data.prepare``), report its size and speed."""
    inputs = [cfg.inputs] if isinstance(cfg.inputs, str) else list(cfg.inputs or [])
    if not inputs and not cfg.hf_dataset:
        raise BitLMError(
            "nothing to prepare: pass 'inputs=[files, folders or globs]' or hf_dataset=NAME_OR_DIR"
        )
    started = time.perf_counter()
    sources = file_sources(inputs) if inputs else []
    if cfg.hf_dataset:
        sources.append(hf_source(cfg.hf_dataset, cfg.hf_split, cfg.hf_text_field, cfg.hf_config))
    index = prepare(
        sources,
        cfg.output,
        val_fraction=cfg.val_fraction,
        split_chunk_bytes=cfg.split_chunk_bytes,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    seconds = time.perf_counter() - started
    return {
        "output": str(Path(cfg.output).expanduser().resolve()),
        "bytes": index["bytes"],
        "sources": len(index["sources"]),
        "train_bytes": index["split"]["train_bytes"],
        "val_bytes": index["split"]["val_bytes"],
        "seconds": round(seconds, 3),
        "mb_per_s": round(index["bytes"] / 1e6 / max(seconds, 1e-9), 1),
    }


main = hydra_app("prepare", prepare_data)

if __name__ == "__main__":
    main()
