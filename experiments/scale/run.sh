#!/usr/bin/env bash
# Reproduces the CPU part of experiments/scale/README.md: float vs 4-bit quantization-aware
# training of the quickstart model at the same wall-clock budget (bitlm-bench compare), each
# exported as float, int8 and int4, all six scored by bitlm-eval on the same held-out text with
# their size on disk. About 8 min on a 2-core CPU.
#   bash experiments/scale/run.sh [OUT] [BUDGET_S]   (from the repository root, after make setup)
set -euo pipefail
OUT=${1:-experiments/scale/out}
BUDGET=${2:-200}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" compare budget_s="$BUDGET" 'seeds=[1]' out_dir="$OUT" \
  output="$OUT/compare.json" \
  'variants=["float: callbacks.model_export.quantize=[int8,int4]","qat: experiment=qat"]' \
  > /dev/null
for run in float qat; do
  dir="$OUT/$run/seed_1"
  "$BIN/bitlm-eval" ckpt_path="$dir/model" "compare=[$dir/model_int8,$dir/model_int4]" \
    'files=[LICENSE/AGPL-3.0.txt]' > "$OUT/eval_$run.json"
done
"$BIN/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = ["| training | export | bpb (AGPL, held out) | size on disk |", "|---|---|---|---|"]
for run in ("float", "qat"):
    report = json.loads((out / f"eval_{run}.json").read_text().strip().splitlines()[-1])
    models = {"float": report, **{p.rsplit("_", 1)[-1]: r for p, r in report["compare"].items()}}
    for export, r in models.items():
        rows.append(f"| {run} | {export} | {r['bpb']:.3f} | {r['size_bytes'] / 1e6:.2f} MB |")
(out / "quantized.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
