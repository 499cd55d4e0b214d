"""Summarise experiments/gpu/run.sh: per run, median MFU and bytes/s per GPU over the logged
throughput windows after the first (compilation, warm-up), and peak GPU memory."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

FRAME_BITS = 9


def _column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def summarize(run_dir: Path) -> dict[str, float | None]:
    with (run_dir / "csv" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    mfu = _column(rows, "train/device/mfu")[1:]
    bits = _column(rows, "train/device/items_per_sec")[1:]
    summary = json.loads((run_dir.parent / f"{run_dir.name}.json").read_text().splitlines()[-1])
    return {
        "mfu": statistics.median(mfu) if mfu else None,
        "bytes_per_s_per_gpu": statistics.median(bits) / FRAME_BITS if bits else None,
        "peak_memory_gib": (summary.get("peak_memory_bytes") or 0) / 2**30 or None,
        "val_bpb": summary["val_bpb"],
    }


def main(out: Path) -> None:
    runs = {d.name: summarize(d) for d in sorted((out / "runs").iterdir()) if d.is_dir()}
    (out / "summary.json").write_text(json.dumps(runs, indent=2) + "\n")
    lines = [
        "| run | MFU | bytes/s per GPU | peak memory (GiB) | val bpb |",
        "|---|---|---|---|---|",
    ]
    for name, row in runs.items():
        cells = [f"{row[k]:.3g}" if row[k] is not None else "–" for k in row]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
