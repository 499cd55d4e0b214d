"""Denoising accuracy against noise level, samples at 8 against 16 steps, and infilling, for
trained diffusion models (and a causal model as the judge of the samples).

    python experiments/diffusion/diffusion_report.py OUT CAUSAL_RUN NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a bitlm-train run directory (its exported model/ is loaded). On the validation split
of the training corpus (the default data config) and on LICENSE/AGPL-3.0.txt it measures, per
model and noise level, the bit accuracy and loss of the masked data bits
(``bitlm.evaluation.bpb.denoising_metrics``). Then, per model, step count and choice temperature (0:
pure confidence order; 1: the default), it samples 64 bytes from nothing with 4 seeds and scores
them under the causal model ("generative bpb": how plausible the text is to an autoregressive
model of the same corpus; the causal model's own samples are the reference), measures their
``distinct_3`` (distinct byte trigrams / trigrams: it exposes samples collapsed into one repeated
byte, which a likelihood judge alone rewards), counts parity repairs and times the sampler. Last
it fills the middle 8 bytes of 64 validation windows (12 bytes before, 12 after), reporting exact
bytes and data-bit accuracy, at 8 and 16 steps and at 1 (every bit at its one-pass argmax).
Writes OUT/report.json, OUT/tables.md, OUT/denoising.png and OUT/samples.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bitlm.bench.plots import save, subplots
from bitlm.core.bits import DATA_BITS, FRAME_BITS, bits_to_bytes, bytes_to_bits
from bitlm.evaluation.bpb import denoising_metrics, model_bits
from bitlm.generation import GenerationOptions, sample
from bitlm.io import load_model
from bitlm.training.datamodule import BitDataModule

LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
STEPS = (8, 16)
CHOICE_TEMPERATURES = (0.0, 1.0)
SEEDS = (0, 1, 2, 3)
SAMPLE_BYTES = 64
TEMPERATURE = 0.8
# a fresh torch.Generator()'s seed: what the infilling of out/report.json was sampled with
INFILL_SEED = 67280421310721


def validation_text(window_bytes: int) -> bytes:
    """The validation windows of the default corpus, concatenated in order."""
    datamodule = BitDataModule(seq_len=window_bytes * FRAME_BITS, batch_size=32)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return b"".join(bytes(datamodule.val_set[i].tolist()) for i in range(len(datamodule.val_set)))


def generative_bpb(judge, text: bytes) -> float:
    return model_bits(judge, text, progress=False) / len(text)


def distinct_3(text: bytes) -> float:
    """Distinct byte trigrams / trigrams: 1 for varied text, near 0 for a run of one byte."""
    grams = [text[i : i + 3] for i in range(len(text) - 2)]
    return len(set(grams)) / max(len(grams), 1)


def samples(model, judge) -> dict:
    diffusion = model.config.mode == "diffusion"
    report = {}
    for steps in STEPS if diffusion else (1,):
        for choice in CHOICE_TEMPERATURES if diffusion else (0.0,):
            texts, repairs, seconds = [], [], []
            for seed in SEEDS:
                start = time.perf_counter()
                options = GenerationOptions(
                    temperature=TEMPERATURE,
                    diffusion_steps=steps,
                    choice_temperature=choice,
                    seed=seed,
                )
                out = sample(model, b"", SAMPLE_BYTES, options)
                seconds.append(time.perf_counter() - start)
                texts.append(bits_to_bytes(out.bits))
                repairs.append(out.parity_repairs)
            key = f"steps_{steps}_choice_{choice:g}" if diffusion else "causal"
            report[key] = {
                "generative_bpb": statistics.mean(generative_bpb(judge, t) for t in texts),
                "distinct_3": statistics.mean(distinct_3(t) for t in texts),
                "parity_repairs_per_byte": sum(repairs) / (len(SEEDS) * SAMPLE_BYTES),
                "seconds_per_sample": statistics.median(seconds),
                "texts": [t.decode("utf-8", errors="replace") for t in texts],
            }
    return report


def infilling(model, text: bytes, window: int) -> dict:
    results = {}
    starts = range(0, len(text) - 32, max(1, (len(text) - 32) // 64))[:64]
    for steps in (1, *STEPS):  # 1 step = every bit at its one-pass argmax
        exact = correct = total = 0
        for start in starts:
            chunk = text[start : start + 32]
            options = GenerationOptions(
                suffix=chunk[20:], diffusion_steps=steps, temperature=0, seed=INFILL_SEED
            )
            out = sample(model, chunk[:12], 8, options)
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
    (out / "tables.md").write_text(tables(report, list(models)))


def tables(report: dict, names: list[str]) -> str:
    """The report's numbers as markdown tables (what experiments/diffusion/README.md quotes)."""
    lines = []
    for split in ("val", "AGPL"):
        lines += [
            f"Bit accuracy on masked data bits, {split} text, by fraction of bits masked:\n",
            "| model | " + " | ".join(f"{x:g}" for x in LEVELS) + " |",
            "|---" * (len(LEVELS) + 1) + "|",
        ]
        for name in names:
            metrics = report[name]["denoising"][split]
            row = " | ".join(f"{metrics[f'{x:g}']['bit_accuracy']:.3f}" for x in LEVELS)
            lines.append(f"| {name} | {row} |")
        lines.append("")
    lines += [
        "64-byte samples from nothing (4 seeds, temperature 0.8), judged by the causal model:\n",
        "| model | sampler | generative bpb | distinct-3 | parity repairs/byte | s/sample |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report.items():
        for key, v in entry["samples"].items():
            lines.append(
                f"| {name} | {key.replace('_', ' ')} | {v['generative_bpb']:.2f} | "
                f"{v['distinct_3']:.2f} | {v['parity_repairs_per_byte']:.3f} | "
                f"{v['seconds_per_sample']:.3f} |"
            )
    lines += [
        "",
        "Infilling 8 bytes between 12 given before and 12 after (greedy, 64 validation windows):\n",
        "| model | steps | exact bytes | data-bit accuracy |",
        "|---|---|---|---|",
    ]
    for name in names:
        for key, v in report[name]["infilling"].items():
            lines.append(
                f"| {name} | {key.split('_')[1]} | {v['exact_bytes']:.3f} | "
                f"{v['bit_accuracy']:.3f} |"
            )
    return "\n".join(lines) + "\n"


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
