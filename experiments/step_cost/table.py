"""Markdown tables of experiments/step_cost/out: step cost (``stacks_*.json`` from
``bitlm-bench train-throughput mode=stacks``) and peak memory (``memory_*.json`` from
``bitlm-bench memory``).

    python experiments/step_cost/table.py OUT > OUT/table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MiB = 2**20


def step_rows(report: dict) -> list[str]:
    """One row per precision × context × variant: wall and CPU ms/step, bytes/s, and the
    variant's ratio to its plain twin and to the byte baseline with the same stack (medians of
    paired per-round ratios, CPU clock)."""
    shape = f"d{report['d_model']} L{report['n_layers']}"
    rows = []
    for precision, contexts in report["results"].items():
        for n_bytes, cell in contexts.items():
            ratios = cell.get("cpu_ratios", cell["ratios"])
            for name, row in cell["variants"].items():
                model, stack = name.split("/")
                vs_plain = ratios.get(f"{model}: reversible/plain") if stack == "reversible" else 1
                vs_byte = ratios.get(f"{model}/byte_baseline: {stack}")
                rows.append(
                    f"| {shape} | {precision} | {n_bytes} | {model} | {stack} "
                    f"| {row['ms_per_step']:.0f} | {row.get('cpu_ms_per_step', float('nan')):.0f} "
                    f"| {row['bytes_per_s']:,.0f} | {_ratio(vs_plain)} | {_ratio(vs_byte)} "
                    f"| {len(row['seconds'])} |"
                )
    return rows


def memory_rows(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    model, n_bytes = path.stem.removeprefix("memory_").rsplit("_", 1)
    rows = []
    for stack, by_depth in report["results"].items():
        for depth, row in by_depth.items():
            rows.append(
                f"| {model} | {n_bytes} | {report['batch_size']} | {stack} | {depth} "
                f"| {row['saved_bytes'] / MiB:.0f} | {row['peak_bytes'] / MiB:.0f} |"
            )
    return rows


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main(out: Path) -> str:
    lines = [
        "| model | precision | bytes | trunk | stack | ms/step (wall) | ms/step (CPU) | bytes/s "
        "| × plain twin | × byte baseline | timed steps |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path in sorted(out.glob("stacks_*.json")):
        lines += step_rows(json.loads(path.read_text()))
    lines += [
        "",
        "| model | bytes | windows | stack | layers | saved for backward (MiB) "
        "| peak during step (MiB) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for path in sorted(out.glob("memory_*.json")):
        lines += memory_rows(path)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
