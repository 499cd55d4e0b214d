"""The diffusion study's tables, plot and samples, from the runs of ``run.sh``.

    python experiments/diffusion/report.py OUT

Reads OUT/{full,half,adapted_<seed>}.json (``bitlm-bench compare`` results: every variant
trained for its budget over the same seeds, scored on the validation split and the held-out
texts) and the
exported models under OUT/<compare>/<variant>/seed_<n>/model. Writes:

* ``OUT/tables.md``, ``OUT/report.json``: per variant, training seconds, val bpb and held-out
  bpb (mean ± std over seeds; a diffusion model's figure is its any-order upper bound) and their
  ratio to the causal model trained for the same total wall-clock;
* ``OUT/bounds.png``: the same as bars;
* ``OUT/samples.md`` and the ``samples`` block of report.json: 64 bytes from nothing per model
  and seed, 16 denoising steps, for each sampler setting in ``SETTINGS``, scored by the causal
  model of the same seed ("generative bpb": how plausible the text is to an autoregressive model
  of the corpus) and by ``distinct_3`` (distinct byte trigrams / trigrams: low when a sample
  collapses into repeats, which a likelihood judge alone rewards).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

from bitlm.bench.plots import save, subplots
from bitlm.core.bits import bits_to_bytes
from bitlm.evaluation.bpb import text_bpb
from bitlm.generation import GenerationOptions, sample
from bitlm.io import load_model

CAUSAL = ("full", "causal")
"""The reference: the causal model trained for the whole budget."""
DIFFUSION = (("full", "frame"), ("full", "bit_v1"), ("adapted_{seed}", "adapted"))
SAMPLE_BYTES = 64
SAMPLE_SEEDS = (0, 1, 2, 3)
SETTINGS = {
    "greedy": {"temperature": 0.0},
    "greedy, pure confidence": {"temperature": 0.0, "choice_temperature": 0.0},
    "greedy, remask": {"temperature": 0.0, "remask": True},
    "T=0.8": {"temperature": 0.8},
    "T=0.8, remask": {"temperature": 0.8, "remask": True},
}
"""Sampler settings (``GenerationOptions``; the rest at their defaults: choice temperature 1)."""


def distinct_3(text: bytes) -> float:
    """Distinct byte trigrams / trigrams: 1 for varied text, near 0 for a run of one byte."""
    grams = [text[i : i + 3] for i in range(len(text) - 2)]
    return len(set(grams)) / max(len(grams), 1)


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def variant_runs(out: Path) -> dict[str, list[dict]]:
    """Each variant's runs (one per seed, in seed order), from the compare results: ``full``
    and ``half`` hold theirs; each seed of ``adapted`` is its own compare (``adapted_<seed>``),
    started from the ``causal_half`` model of that seed."""
    full, half = (json.loads((out / f"{name}.json").read_text()) for name in ("full", "half"))
    runs = {**full["runs"], **half["runs"]}
    runs["adapted"] = [
        json.loads((out / f"adapted_{seed}.json").read_text())["runs"]["adapted"][0]
        for seed in full["seeds"]
    ]
    for adapted, start in zip(runs["adapted"], runs["causal_half"], strict=True):
        adapted["seconds"] += start["seconds"]  # the adaptation's wall-clock includes its start
    return runs


def bound_table(runs: dict[str, list[dict]]) -> dict:
    """Per variant: mean ± std over seeds of seconds, steps, val bpb, held-out bpb (the mean of
    the held-out files) and each file's bpb, and the ratios of the means to the causal model's."""
    rows = {}
    for name, seeds in runs.items():
        files = {
            Path(f).name: mean_std([r["file_bpb"][f] for r in seeds]) for f in seeds[0]["file_bpb"]
        }
        rows[name] = {
            "seconds": statistics.mean(r["seconds"] for r in seeds),
            "steps": statistics.mean(r["steps"] for r in seeds),
            "val_bpb": mean_std([r["val_bpb"] for r in seeds]),
            "held_out_bpb": mean_std([r["eval_bpb"] for r in seeds]),
            "files": files,
        }
    causal = rows[CAUSAL[1]]
    for row in rows.values():
        row["val_ratio"] = row["val_bpb"]["mean"] / causal["val_bpb"]["mean"]
        row["held_out_ratio"] = row["held_out_bpb"]["mean"] / causal["held_out_bpb"]["mean"]
    return rows


def samples(out: Path, seeds: list[int]) -> dict:
    """Per model and sampler setting: generative bpb, distinct-3 and the first seed's texts (the
    causal model samples too, greedy and at T=0.8, as the reference)."""
    judges = {seed: load_model(run_dir(out, CAUSAL, seed)) for seed in seeds}
    report = {}
    for variant in (CAUSAL, *DIFFUSION):
        models = {seed: load_model(run_dir(out, variant, seed)) for seed in seeds}
        settings = SETTINGS if variant != CAUSAL else {k: SETTINGS[k] for k in ("greedy", "T=0.8")}
        report[variant[1]] = {
            label: sampled(models, judges, GenerationOptions(**options))
            for label, options in settings.items()
        }
    return report


def run_dir(out: Path, variant: tuple[str, str], seed: int) -> Path:
    compare, name = variant
    return out / compare.format(seed=seed) / name / f"seed_{seed}" / "model"


def sampled(models: dict, judges: dict, options: GenerationOptions) -> dict:
    texts, scores = [], []
    for seed, model in models.items():
        for sample_seed in SAMPLE_SEEDS:
            seeded = dataclasses.replace(options, seed=sample_seed)
            text = bits_to_bytes(sample(model, b"", SAMPLE_BYTES, seeded).bits)
            texts.append(text)
            scores.append(text_bpb(judges[seed], text))
    return {
        "generative_bpb": statistics.mean(scores),
        "distinct_3": statistics.mean(distinct_3(t) for t in texts),
        "min_distinct_3": min(distinct_3(t) for t in texts),
        "texts": [t.decode("utf-8", errors="replace") for t in texts[: len(SAMPLE_SEEDS)]],
    }


def plot(rows: dict, causal: dict, path: Path) -> None:
    fig, axes = subplots(2, width=6.5)
    names = list(rows)
    panels = (("val_bpb", "validation split"), ("held_out_bpb", "held-out texts (mean of 4)"))
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        means = [rows[n][key]["mean"] for n in names]
        stds = [rows[n][key]["std"] for n in names]
        ax.bar(names, means, yerr=stds, color="tab:blue", capsize=4)
        reference = causal[key]["mean"]
        ax.axhline(reference, color="black", linestyle="--", label="causal")
        ax.axhline(1.3 * reference, color="tab:red", linestyle=":", label="causal + 30 %")
        ax.set(title=title, ylabel="bits per byte (diffusion: upper bound)")
        ax.legend()
    save(fig, path)


def tables(rows: dict, sampled: dict) -> str:
    lines = [
        "| variant | training s | steps | val bpb | held-out bpb | val / causal "
        "| held-out / causal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        val, held = row["val_bpb"], row["held_out_bpb"]
        lines.append(
            f"| {name} | {row['seconds']:.0f} | {row['steps']:.0f} "
            f"| {val['mean']:.3f} ± {val['std']:.3f} | {held['mean']:.3f} ± {held['std']:.3f} "
            f"| {row['val_ratio']:.2f} | {row['held_out_ratio']:.2f} |"
        )
    files = list(next(iter(rows.values()))["files"])
    lines += ["", "| variant | " + " | ".join(files) + " |", "|---" * (len(files) + 1) + "|"]
    for name, row in rows.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{row['files'][f]['mean']:.3f}" for f in files) + " |"
        )
    lines += [
        "",
        "| model | sampler | generative bpb | distinct-3 | min distinct-3 |",
        "|---|---|---|---|---|",
    ]
    for name, by_setting in sampled.items():
        for label, s in by_setting.items():
            lines.append(
                f"| {name} | {label} | {s['generative_bpb']:.2f} | {s['distinct_3']:.2f} "
                f"| {s['min_distinct_3']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def sample_text(sampled: dict) -> str:
    lines = [
        "# Samples: 64 bytes from nothing, 16 steps, first seed of each model, sample seeds 0-3",
        "",
    ]
    for name, by_setting in sampled.items():
        for label, s in by_setting.items():
            lines.append(f"## {name}, {label}\n")
            lines += [f"    {t!r}" for t in s["texts"]]
            lines.append("")
    return "\n".join(lines)


def main(out: Path) -> None:
    runs = variant_runs(out)
    seeds = [int(Path(r["run_dir"]).name.removeprefix("seed_")) for r in runs[CAUSAL[1]]]
    rows = bound_table(runs)
    sampled = samples(out, seeds)
    report = {"seeds": seeds, "bounds": rows, "samples": sampled}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "tables.md").write_text(tables(rows, sampled))
    (out / "samples.md").write_text(sample_text(sampled))
    plot(rows, rows[CAUSAL[1]], out / "bounds.png")
    print((out / "tables.md").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
