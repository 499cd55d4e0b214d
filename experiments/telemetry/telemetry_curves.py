"""Telemetry curves of finished runs, read from their TensorBoard logs: one JSON summary
(last and minimum values per run) and one figure (telemetry/S, telemetry/C and val/bpb against
step, with the safety gate's default floors).

    python experiments/telemetry/telemetry_curves.py OUT NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a bitlm-train run directory (it holds tensorboard/); OUT/curves.json and
OUT/curves.png are written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bitlm.bench.plots import save, subplots

TAGS = ("telemetry/S", "telemetry/C", "telemetry/K", "telemetry/layers_run", "val/bpb", "val/S")
PANELS = (("telemetry/S", 0.25), ("telemetry/C", 0.3), ("val/bpb", None))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), …]}`` over every event file of the run, in step order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for events_file in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in set(TAGS) & set(events.Tags()["scalars"]):
            series.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in series.items()}


def main(out: Path, runs: dict[str, Path]) -> None:
    curves = {name: scalars(path) for name, path in runs.items()}
    summary = {
        name: {
            tag: {"last": points[-1][1], "min": min(v for _, v in points)}
            for tag, points in series.items()
        }
        for name, series in curves.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "curves.json").write_text(json.dumps(summary, indent=1) + "\n")
    fig, axes = subplots(len(PANELS), width=4.8)
    for ax, (tag, floor) in zip(axes[0], PANELS, strict=True):
        for name, series in curves.items():
            if tag in series:
                steps, values = zip(*series[tag], strict=True)
                ax.plot(steps, values, label=name, linewidth=1)
        if floor is not None:
            ax.axhline(floor, color="red", linestyle="--", linewidth=1, label="gate floor")
        ax.set_xlabel("step")
        ax.set_title(tag)
    axes[0][0].legend(fontsize=7)
    save(fig, out / "curves.png")


if __name__ == "__main__":
    pairs = dict(arg.split("=", 1) for arg in sys.argv[2:])
    main(Path(sys.argv[1]), {name: Path(path) for name, path in pairs.items()})
