"""compare: model variants trained for the same wall-clock budget over several seeds, scored on
held-out text, with mean ± std, Welch's t-test against the first variant, a table and a plot.

A variant is ``"NAME: bitlm-train overrides"`` (e.g. ``"byte: model=byte_baseline"``). Its
runs are ordinary training runs (checkpoints, exported model, TensorBoard) in
``out_dir/<variant>/seed_<seed>``. To give every variant the whole budget with a finished
learning-rate schedule, its step count is calibrated first: the measured seconds per step of
that variant (same config, Lightning, a few steps; the median of ``probe_rounds`` probes, the
variants alternated) fill ``fill`` of the budget, and
``trainer.max_time`` = the budget stops any run that would overrun. Runs go seed by seed
across the variants (seed 1 of every variant, then seed 2, …), so a drift in the machine's
speed, which on a shared VM moves throughput by ±20 % over minutes, hits every variant alike
instead of all seeds of one. Each exported model is scored with ``bitlm-eval`` on
``eval_files``, together and one by one (held-out texts of different kinds: a gain on one may
be a loss on another); the final ``val/bpb`` (the held-out split of the training corpus) is
reported beside it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bitlm.bench.loops import TimedRun, lightning_seconds
from bitlm.bench.measure import corpus_batches
from bitlm.bench.plots import save, subplots
from bitlm.core.errors import BitLMError
from bitlm.core.files import write_atomic
from bitlm.core.runtime import config_dir, pick_device
from bitlm.training.precision import resolve_precision

METRICS = ("eval_bpb", "val_bpb")
"""Per run: bpb on ``eval_files`` (via bitlm-eval) and the final val/bpb of the training run."""


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """``["bit: model=small", "byte: model=byte_baseline"]`` → {name: [overrides]}."""
    variants: dict[str, list[str]] = {}
    for spec in specs:
        name, colon, overrides = str(spec).partition(":")
        name = name.strip()
        if not colon or not name or name in variants:
            problem = "a repeated name" if name in variants else "not 'NAME: override …'"
            raise BitLMError(f"variant {spec!r} is {problem}, e.g. 'bit: model=small'")
        variants[name] = overrides.split()
    return variants


def step_seconds(overrides: list[str], probe_steps: int) -> float:
    """Seconds per optimizer step of this variant, timed over a short Lightning fit."""
    if GlobalHydra.instance().is_initialized():  # inside bitlm-bench: same config tree
        cfg = hydra.compose("train", overrides=overrides)
    else:
        with hydra.initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = hydra.compose("train", overrides=overrides)
    module_kwargs = OmegaConf.to_container(cfg.module, resolve=True)
    del module_kwargs["_target_"], module_kwargs["model"]
    # the first steps build kernels and fill caches: untimed, or short probes under-count speed
    skip = min(max(1, probe_steps // 4), probe_steps - 1)
    run = TimedRun(
        instantiate(cfg.model),
        corpus_batches(probe_steps, cfg.data.batch_size, cfg.data.seq_len),
        resolve_precision(cfg.trainer.precision),
        skip,
        pick_device("auto"),
        module_kwargs,
    )
    return lightning_seconds(run) / (probe_steps - skip)


def calibrate(
    overrides: dict[str, list[str]], seconds: float, probe_steps: int, rounds: int
) -> dict[str, int]:
    """Steps each variant completes in ``seconds``: the median over ``rounds`` probes per variant
    (``step_seconds``), the variants alternated in each round so that they are timed at the same
    machine speed."""
    probes: dict[str, list[float]] = {name: [] for name in overrides}
    for _ in range(rounds):
        for name, variant in overrides.items():
            probes[name].append(step_seconds(variant, probe_steps))
    return {name: max(1, int(seconds / statistics.median(p))) for name, p in probes.items()}


def train_variant(
    name: str,
    overrides: list[str],
    seeds: list[int],
    steps: int,
    budget_s: float,
    val_checks: int,
    out_dir: Path,
) -> list[dict[str, Any]]:
    """One Hydra multirun of ``bitlm-train`` over ``seeds``; the JSON summary of each run
    (``run`` calls it one seed at a time)."""
    seconds = math.ceil(budget_s)
    max_time = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    command = [
        sys.executable,
        "-m",
        "bitlm.cli.train",
        "--multirun",
        *overrides,
        f"trainer.max_steps={steps}",
        f"trainer.max_time={max_time}",
        f"trainer.val_check_interval={max(1, steps // val_checks)}",
        f"seed={','.join(str(s) for s in seeds)}",
        f"hydra.sweep.dir={out_dir / name}",
        "hydra.sweep.subdir=seed_${seed}",
    ]
    summaries = _json_lines(_run(command))
    if len(summaries) != len(seeds):
        raise BitLMError(f"variant {name}: expected {len(seeds)} runs, got {len(summaries)}")
    return summaries


def evaluate_run(model_dir: str, eval_files: list[str], batch_size: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bitlm.cli.eval",
        f"ckpt_path={model_dir}",
        f"files=[{','.join(json.dumps(str(f)) for f in eval_files)}]",
        f"batch_size={batch_size}",
    ]
    return _json_lines(_run(command))[-1]


def _run(command: list[str]) -> str:
    """Run a bitlm command; its progress and logs pass through to our stderr."""
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=None, text=True)
    if result.returncode != 0:
        raise BitLMError(f"{' '.join(command[2:4])} failed (exit {result.returncode}); see above")
    return result.stdout


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def welch(a: list[float], b: list[float]) -> dict[str, float] | None:
    """Welch's unequal-variance t-test of mean(a) vs mean(b); None with fewer than 2 per side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    test = ttest_ind(a, b, equal_var=False)
    return {"t": float(test.statistic), "p": float(test.pvalue)}


def mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation; the deviation of one value is undefined: None (JSON
    null; NaN is not JSON)."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: mean ± std of each metric and of training bytes/s (bytes of text read over
    the run's wall-clock seconds, start-up and validation included), mean steps and seconds;
    against the first variant:
    ``gap = mean(this) / mean(first) − 1`` (−0.3: 30 % fewer bits per byte than the first) and
    Welch's t-test."""
    first = next(iter(runs))
    table: dict[str, Any] = {}
    for name, rows in runs.items():
        entry: dict[str, Any] = {
            metric: mean_std([row[metric] for row in rows]) for metric in METRICS
        }
        entry["steps"] = statistics.fmean(row["steps"] for row in rows)
        entry["seconds"] = statistics.fmean(row["seconds"] for row in rows)
        entry["bytes_per_s"] = mean_std([row["train_bytes"] / row["seconds"] for row in rows])
        if "file_bpb" in rows[0]:
            entry["file_bpb"] = per_file(rows, runs[first])
        if name != first:
            for metric in METRICS:
                ours = [row[metric] for row in runs[first]]
                theirs = [row[metric] for row in rows]
                entry[f"{metric}_vs_{first}"] = {
                    "gap": statistics.fmean(theirs) / statistics.fmean(ours) - 1.0,
                    "welch": welch(ours, theirs),
                }
        table[name] = entry
    return table


def per_file(rows: list[dict[str, Any]], first: list[dict[str, Any]]) -> dict[str, Any]:
    """Per eval file: mean ± std of the variant's bpb over seeds, and its gap to the first
    variant (``mean(this) / mean(first) − 1``): the held-out texts of different kinds apart."""
    files: dict[str, Any] = {}
    for file in rows[0]["file_bpb"]:
        ours = [row["file_bpb"][file] for row in rows]
        base = statistics.fmean(row["file_bpb"][file] for row in first)
        files[file] = {**mean_std(ours), "gap": statistics.fmean(ours) / base - 1.0}
    return files


def file_table(summary: dict[str, Any], references: dict[str, dict[str, float]]) -> str:
    """Markdown: bpb per eval file (columns) and variant (rows), the gap to the first variant in
    brackets, then the compressors on each file."""
    files = list(next(iter(summary.values()))["file_bpb"])
    lines = ["| variant | " + " | ".join(files) + " |", "|---" * (len(files) + 1) + "|"]
    for i, (name, entry) in enumerate(summary.items()):
        cells = [entry["file_bpb"][f] for f in files]
        shown = [_pm(c) + ("" if i == 0 else f" ({c['gap']:+.1%})") for c in cells]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    for ref in next(iter(references.values()), {}):
        row = " | ".join(f"{references[f][ref]:.3f}" for f in files)
        lines.append(f"| {ref} (compressor) | {row} |")
    return "\n".join(lines) + "\n"


def markdown_table(summary: dict[str, Any], references: dict[str, float]) -> str:
    first = next(iter(summary))
    lines = [
        "| variant | bpb on eval files | val/bpb | steps | seconds | bytes/s "
        f"| eval bpb vs {first} (Welch p) | val/bpb vs {first} (Welch p) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        gaps = [_gap(entry.get(f"{metric}_vs_{first}")) for metric in METRICS]
        lines.append(
            f"| {name} | {_pm(entry['eval_bpb'])} | {_pm(entry['val_bpb'])} | "
            f"{entry['steps']:.0f} | {entry['seconds']:.0f} | "
            f"{_pm(entry['bytes_per_s'], '.0f')} | {' | '.join(gaps)} |"
        )
    lines += [f"| {ref} (compressor) | {bpb:.3f} | | | | | | |" for ref, bpb in references.items()]
    return "\n".join(lines) + "\n"


def _pm(stats: dict[str, float | None], spec: str = ".3f") -> str:
    """``mean ± std``, or the mean alone for one seed."""
    if stats["std"] is None:
        return f"{stats['mean']:{spec}}"
    return f"{stats['mean']:{spec}} ± {stats['std']:{spec}}"


def _gap(versus: dict[str, Any] | None) -> str:
    """``+4.2% (p = 0.03)``: the gap to the first variant and Welch's p (none with one seed);
    — for the first."""
    if not versus:
        return "—"
    if not versus["welch"]:
        return f"{versus['gap']:+.1%}"
    return f"{versus['gap']:+.1%} (p = {versus['welch']['p']:.3g})"


def plot(runs: dict[str, list[dict[str, Any]]], references: dict[str, float], path: Path) -> None:
    """Left: val/bpb against training minutes, one line per run. Right: bpb on the eval files
    per variant (mean ± std, seeds as dots) with the compressors as dashed lines."""
    import matplotlib.pyplot as plt

    fig, axes = subplots(2)
    curves, bars = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(runs.items()):
        for j, row in enumerate(rows):
            minutes, bpb = learning_curve(row["run_dir"])
            curves.plot(
                minutes,
                bpb,
                color=colors[i % len(colors)],
                alpha=0.8,
                label=name if j == 0 else None,
            )
        values = [row["eval_bpb"] for row in rows]
        stats = mean_std(values)
        bars.bar(
            i,
            stats["mean"],
            yerr=stats["std"] or 0,
            color=colors[i % len(colors)],
            alpha=0.6,
            capsize=4,
        )
        bars.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    for k, (ref, bpb) in enumerate(references.items()):
        bars.axhline(
            bpb, linestyle="--", linewidth=1, color=colors[(len(runs) + k) % len(colors)], label=ref
        )
    curves.set(
        xlabel="training time (minutes)", ylabel="val/bpb", title="Validation during training"
    )
    curves.legend()
    bars.set_xticks(range(len(runs)), list(runs), rotation=20, ha="right")
    bars.set(ylabel="bits per byte", title="Held-out eval files (mean ± std over seeds)")
    bars.legend(fontsize=8)
    save(fig, path)


def learning_curve(run_dir: str) -> tuple[list[float], list[float]]:
    """(minutes since the first logged scalar, val/bpb) from a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    points: list[tuple[float, float]] = []
    start = math.inf
    for folder in sorted(
        {events.parent for events in Path(run_dir).rglob("events.out.tfevents.*")}
    ):
        accumulator = EventAccumulator(str(folder))  # reads every event file in the folder
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        start = min([start, *(accumulator.Scalars(tag)[0].wall_time for tag in tags)])
        if "val/bpb" in tags:
            points += [(event.wall_time, event.value) for event in accumulator.Scalars("val/bpb")]
    points.sort()
    return [(t - start) / 60 for t, _ in points], [value for _, value in points]


def run(
    variants: dict[str, list[str]],
    seeds: list[int],
    budget_s: float,
    eval_files: list[str],
    out_dir: str,
    common_overrides: list[str],
    fill: float = 0.9,
    probe_steps: int = 40,
    probe_rounds: int = 3,
    val_checks: int = 4,
    eval_batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    if not variants or not seeds:
        raise BitLMError("compare needs at least one variant and one seed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    references: dict[str, float] = {}
    file_references: dict[str, dict[str, float]] = {}
    overrides = {name: [*common_overrides, *extra] for name, extra in variants.items()}
    steps = calibrate(overrides, budget_s * fill, probe_steps, probe_rounds)
    if progress:
        progress(f"steps filling {fill:.0%} of {budget_s:.0f} s: {steps}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for seed in seeds:  # seed by seed across the variants: drift in machine speed hits all alike
        for name in variants:
            if progress:
                progress(f"{name}, seed {seed}: training …")
            row = train_variant(
                name, overrides[name], [seed], steps[name], budget_s, val_checks, out
            )[0]
            scored = evaluate_run(row["model_dir"], eval_files, eval_batch_size)
            row["eval_bpb"], row["file_bpb"] = scored["bpb"], scored["files"]
            references, file_references = scored["references"], scored["file_references"]
            runs[name].append(row)
    summary = summarize(runs)
    result = {
        "budget_s": budget_s,
        "seeds": seeds,
        "eval_files": eval_files,
        "variants": variants,
        "calibrated_steps": steps,
        "summary": summary,
        "references": references,
        "file_references": file_references,
        "runs": runs,
        "table": str(out / "table.md"),
        "plot": str(out / "compare.png"),
    }
    tables = markdown_table(summary, references) + "\n" + file_table(summary, file_references)
    write_atomic(out / "table.md", tables.encode())
    write_atomic(out / "results.json", json.dumps(result, indent=2).encode())
    plot(runs, references, out / "compare.png")
    return result
