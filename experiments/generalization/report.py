"""Plot a generalization compare: each variant's bpb gap to the first variant on the validation
split and on each held-out text, as grouped bars (one group per variant, one bar per text).

    python experiments/generalization/report.py OUT/screen/results.json OUT/screen_gaps.png
"""

import json
import sys
from pathlib import Path

from bitlm.bench.plots import save, subplots


def gaps(result: dict) -> tuple[list[str], dict[str, list[float]]]:
    """(variants after the first, {text: [gap of each variant, in %]}), ``val`` first."""
    summary = result["summary"]
    first, *others = summary
    texts: dict[str, list[float]] = {"val": []}
    for name in others:
        entry = summary[name]
        texts["val"].append(100 * entry[f"val_bpb_vs_{first}"]["gap"])
        for file, stats in entry["file_bpb"].items():
            texts.setdefault(Path(file).name, []).append(100 * stats["gap"])
    return others, texts


def main() -> None:
    results, png = Path(sys.argv[1]), Path(sys.argv[2])
    result = json.loads(results.read_text())
    variants, texts = gaps(result)
    fig, axes = subplots(1, width=max(8.0, 0.9 * len(variants) * len(texts) / 2))
    ax = axes[0][0]
    width = 0.8 / len(texts)
    for k, (text, values) in enumerate(texts.items()):
        ax.bar([i + k * width for i in range(len(variants))], values, width, label=text)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(variants))], variants, rotation=30)
    first = next(iter(result["summary"]))
    ax.set(ylabel=f"bpb vs {first} (%; below 0 is better)", title="Held-out bpb by kind of text")
    ax.legend(fontsize=8)
    save(fig, png)


if __name__ == "__main__":
    main()
