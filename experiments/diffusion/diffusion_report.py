"""Denoising accuracy against noise level, samples at 8 against 16 steps, and infilling, for
trained diffusion models (and a causal model as the judge of the samples).

    python experiments/diffusion/diffusion_report.py OUT CAUSAL_RUN NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a bitlm-train run directory (its exported model/ is loaded). On the validation split
of the training corpus (the default data config) and on LICENSE/AGPL-3.0.txt it measures, per
model and noise level, the bit accuracy and loss of the masked data bits
(``bitlm.evaluate.denoising_metrics``). Then, per model and step count, it samples 64 bytes from
nothing with 4 seeds and scores them under the causal model ("generative bpb": how plausible the
text is to an autoregressive model of the same corpus; the causal model's own samples are the
reference), counts parity repairs and times the sampler; and it fills the middle 8 bytes of 64
validation windows (12 bytes before, 12 after), reporting exact bytes and data-bit accuracy.
Writes OUT/report.json, OUT/denoising.png and OUT/samples.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bitlm.bench.plots import save, subplots
from bitlm.bits import DATA_BITS, FRAME_BITS, bits_to_bytes, bits_to_text, bytes_to_bits
from bitlm.evaluate import denoising_metrics, model_bits
from bitlm.hub import load_model
from bitlm.lit.datamodule import BitDataModule
from bitlm.sampling import sample

LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
STEPS = (8, 16)
SEEDS = (0, 1, 2, 3)
SAMPLE_BYTES = 64
TEMPERATURE = 0.8


def validation_text(window_bytes: int) -> bytes:
    """The validation windows of the default corpus, concatenated in order."""
    datamodule = BitDataModule(seq_len=window_bytes * FRAME_BITS, batch_size=32)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return b"".join(bits_to_bytes(datamodule.val_set[i]) for i in range(len(datamodule.val_set)))


def generative_bpb(judge, text: bytes) -> float:
    return model_bits(judge, text, progress=False) / len(text)


def samples(model, judge) -> dict:
    report = {}
    for steps in STEPS if model.config.mode == "diffusion" else (None,):
        texts, repairs, seconds = [], [], []
        for seed in SEEDS:
            start = time.perf_counter()
            out = sample(
                model,
                b"",
                SAMPLE_BYTES,
                temperature=TEMPERATURE,
                diffusion_steps=steps or 1,
                generator=torch.Generator().manual_seed(seed),
            )
            seconds.append(time.perf_counter() - start)
            texts.append(bits_to_text(out.bits))
            repairs.append(out.parity_repairs)
        bpbs = [generative_bpb(judge, t.encode("utf-8", errors="replace")) for t in texts]
        report[f"steps_{steps}" if steps else "causal"] = {
            "generative_bpb": statistics.mean(bpbs),
            "generative_bpb_each": bpbs,
            "parity_repairs_per_byte": sum(repairs) / (len(SEEDS) * SAMPLE_BYTES),
            "seconds_per_sample": statistics.median(seconds),
            "texts": texts,
        }
    return report


def infilling(model, text: bytes, window: int) -> dict:
    results = {}
    starts = range(0, len(text) - 32, max(1, (len(text) - 32) // 64))[:64]
    for steps in STEPS:
        exact = correct = total = 0
        for start in starts:
            chunk = text[start : start + 32]
            out = sample(
                model,
                chunk[:12],
                8,
                suffix=chunk[20:],
                diffusion_steps=steps,
                temperature=0,
                generator=torch.Generator(),
            )
            filled = out.bits.view(-1, FRAME_BITS)[:, :DATA_BITS]
            truth = bytes_to_bits(chunk[12:20]).view(-1, FRAME_BITS)[:, :DATA_BITS]
            exact += int((filled == truth).all(1).sum())
            correct += int((filled == truth).sum())
            total += truth.numel()
        results[f"steps_{steps}"] = {
            "exact_bytes": exact / (8 * len(starts)),
            "bit_accuracy": correct / total,
        }
    return results


def main(out: Path, causal_run: Path, runs: dict[str, Path]) -> None:
    judge = load_model(causal_run / "model")
    models = {name: load_model(path / "model") for name, path in runs.items()}
    window = judge.config.max_bytes
    texts = {"val": validation_text(window), "AGPL": Path("LICENSE/AGPL-3.0.txt").read_bytes()}
    report: dict = {"causal": {"samples": samples(judge, judge)}}
    for name, model in models.items():
        torch.manual_seed(0)
        report[name] = {
            "denoising": {
                split: denoising_metrics(model, data, LEVELS, 64) for split, data in texts.items()
            },
            "samples": samples(model, judge),
            "infilling": infilling(model, texts["val"], window),
        }
        print(name, json.dumps(report[name]["infilling"]), file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    figure(report, list(models), out / "denoising.png")
    lines = []
    for name, entry in report.items():
        for key, value in entry["samples"].items():
            lines.append(f"### {name}, {key.replace('_', ' ')}\n")
            lines += [f"    {text!r}" for text in value["texts"][:2]]
            lines.append("")
    (out / "samples.md").write_text("\n".join(lines))


def figure(report: dict, names: list[str], path: Path) -> None:
    fig, axes = subplots(2, width=4.8)
    for ax, split in zip(axes[0], ("val", "AGPL"), strict=True):
        for name in names:
            metrics = report[name]["denoising"][split]
            ax.plot(LEVELS, [metrics[f"{x:g}"]["bit_accuracy"] for x in LEVELS], "o-", label=name)
        ax.set_xlabel("fraction of bits masked")
        ax.set_ylabel("accuracy on masked data bits")
        ax.set_title(f"{split} text")
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)


if __name__ == "__main__":
    out_dir, causal, *pairs = sys.argv[1:]
    main(Path(out_dir), Path(causal), {k: Path(v) for k, v in (p.split("=", 1) for p in pairs)})
