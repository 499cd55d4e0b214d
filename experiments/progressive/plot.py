"""Val bpb against wall-clock seconds for the runs of run.sh (TensorBoard logs), growths marked;
results.json and results.md beside the figure.

    python experiments/progressive/plot.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bitlm.bench.plots import save, subplots

ARMS = {
    "scratch_cosine": "small from scratch, cosine LR",
    "scratch_constant": "small from scratch, constant LR",
    "progressive": "grown from ¼ size, constant LR (÷√2 per growth)",
}


def curves(run: Path) -> dict[str, list[tuple[float, int, float]]]:
    """(seconds since the first logged event, step, value) of val/bpb and expansion/parameters."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = [t for t in ("val/bpb", "expansion/parameters") if t in events.Tags()["scalars"]]
    start = min(e.wall_time for t in events.Tags()["scalars"] for e in events.Scalars(t))
    return {t: [(e.wall_time - start, e.step, e.value) for e in events.Scalars(t)] for t in tags}


def main(out: Path) -> None:
    fig, axes = subplots(1, width=8.0)
    ax = axes[0, 0]
    results = {}
    for name, label in ARMS.items():
        summary = json.loads((out / f"{name}.json").read_text())
        logs = curves(next((out / "runs" / name).rglob("events.out.tfevents.*")).parent)
        seconds, _, bpb = zip(*logs["val/bpb"], strict=True)
        (line,) = ax.plot(seconds, bpb, marker=".", label=label)
        growths = logs.get("expansion/parameters", [])[1:]  # the first is the starting size
        for t, _, _ in growths:
            ax.axvline(t, color=line.get_color(), linestyle=":", linewidth=1)
        results[name] = {
            "steps": summary["steps"],
            "val_bpb": summary["val_bpb"],
            "parameters": summary["parameters"],
            "seconds": summary["seconds"],
            "growth_steps": [step for _, step, _ in growths],
        }
    ax.set_xlabel("wall-clock seconds of training")
    ax.set_ylabel("val bpb")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    ax.set_title("small model: grown from ¼ size vs from scratch (dotted: growths)")
    ax.legend()
    save(fig, out / "progressive.png")
    for scale in (1, 2):
        summary = json.loads((out / f"extend_rope_scale_{scale}.json").read_text())
        results[f"extend_rope_scale_{scale}"] = summary["val_bpb_by_context"]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = ["| run | steps | parameters | final val bpb | growth steps |", "|---|---|---|---|---|"]
    for name in ARMS:
        r = results[name]
        rows.append(
            f"| {name} | {r['steps']} | {r['parameters']:,} | {r['val_bpb']:.3f} | "
            f"{r['growth_steps'] or '—'} |"
        )
    rows += [
        "",
        "| context extension | bpb@288 before | bpb@576 before | bpb@288 after | bpb@576 after |",
        "|---|---|---|---|---|",
    ]
    for scale in (1, 2):
        r = results[f"extend_rope_scale_{scale}"]
        b, a = r["before"], r["after"]
        rows.append(
            f"| rope_scale={scale} | {b['288']:.3f} | {b['576']:.3f} | {a['288']:.3f} | "
            f"{a['576']:.3f} |"
        )
    (out / "results.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
