"""bitlm-eval: bits per byte of a trained model on text files, next to compressor references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bitlm.app.hydra import hydra_app
from bitlm.core.errors import BitLMError
from bitlm.core.runtime import pick_device
from bitlm.data import resolve_paths
from bitlm.evaluation.bpb import compressor_references, denoising_metrics, model_bits
from bitlm.io import load_model, quantization_of, stored_size


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score every file; the total bpb weights files by their length (Σ bits / Σ bytes). A
    diffusion model's bpb is an estimate of an upper bound (one seeded random mask per window,
    unbiased for the bound), reported with its denoising metrics. Each model of ``compare``
    (e.g. the int8 and int4 exports of the same run) is scored on the same bytes."""
    if cfg.batch_size < 1:
        raise BitLMError(f"batch_size must be a positive integer, got {cfg.batch_size}")
    if cfg.stride_bytes is not None and cfg.stride_bytes < 1:
        raise BitLMError(f"stride_bytes must be a positive integer or null, got {cfg.stride_bytes}")
    levels = list(cfg.noise_levels)
    if not all(isinstance(x, (int, float)) and 0 < x <= 1 for x in levels):
        raise BitLMError(f"noise_levels must be numbers in (0, 1], got {levels}")
    if isinstance(cfg.compare, str):
        raise BitLMError(f"compare takes a list of models: 'compare=[{cfg.compare}]'")
    files = resolve_paths([cfg.files] if isinstance(cfg.files, str) else list(cfg.files))
    texts = {_display_name(f): f.read_bytes() for f in files}
    report = _score(cfg.ckpt_path, texts, cfg)
    n_bytes = report["bytes"]
    per_file_refs = {name: compressor_references(data) for name, data in texts.items()}
    report["references"] = {
        ref: sum(refs[ref] * len(texts[name]) for name, refs in per_file_refs.items()) / n_bytes
        for ref in next(iter(per_file_refs.values()))
    }
    report["file_references"] = per_file_refs
    if cfg.compare:
        report["compare"] = {
            str(path): {
                k: v for k, v in _score(path, texts, cfg).items() if k not in ("bytes", "files")
            }
            for path in cfg.compare
        }
    return report


def _score(path: str, texts: dict[str, bytes], cfg: DictConfig) -> dict[str, Any]:
    """One model's report on ``texts``: bpb overall and per file, its size on disk and
    quantization (and, for a diffusion model, the bound flag and denoising metrics)."""
    model = load_model(path, pick_device(cfg.device))
    if model.config.mode == "diffusion" and cfg.stride_bytes is not None:
        raise BitLMError(
            "stride_bytes sets the context overlap of causal scoring; a diffusion model is scored "
            "on non-overlapping windows: leave stride_bytes=null"
        )
    stride = cfg.stride_bytes and min(cfg.stride_bytes, model.config.max_bytes)
    bits = {
        name: model_bits(model, data, stride, cfg.batch_size, seed=cfg.seed)
        for name, data in texts.items()
    }
    n_bytes = sum(len(data) for data in texts.values())
    report = {
        "bpb": sum(bits.values()) / n_bytes,
        "bytes": n_bytes,
        "files": {name: bits[name] / len(texts[name]) for name in texts},
        "size_bytes": stored_size(path),
        "quantization": quantization_of(path),
    }
    if model.config.mode == "diffusion":
        report["bpb_is_upper_bound"] = True
        all_text = b"".join(texts.values())
        levels = list(cfg.noise_levels)
        report["denoising"] = denoising_metrics(model, all_text, levels, cfg.batch_size, cfg.seed)
    return report


def _display_name(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


main = hydra_app("eval", evaluate)

if __name__ == "__main__":
    main()
