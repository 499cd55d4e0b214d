#!/usr/bin/env bash
# Reproduces experiments/quickstart/README.md: the default training, held-out evaluation,
# a generated sample, and training throughput in fp32 vs bf16-mixed measured back to back.
#   bash experiments/quickstart/run.sh [OUT]        (run from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/quickstart/out}
BIN=${BIN:-.venv/bin}
rm -rf "$OUT/run" "$OUT"/speed_*  # this script's own previous runs: start clean
mkdir -p "$OUT"

/usr/bin/time -f "%e" -o "$OUT/train.seconds" "$BIN/bitlm-train" hydra.run.dir="$OUT/run" | tail -n 1 > "$OUT/train.json"

# English the model never trained on: the AGPL text in this repository (and Debian's GPL-3)
FILES="LICENSE/AGPL-3.0.txt"
[ -f /usr/share/common-licenses/GPL-3 ] && FILES="$FILES,/usr/share/common-licenses/GPL-3"
"$BIN/bitlm-eval" ckpt_path="$OUT/run/model" "files=[$FILES]" | tail -n 1 > "$OUT/eval.json"
"$BIN/bitlm-generate" ckpt_path="$OUT/run/model" prompt="The module" max_new_bytes=300 seed=0 \
  | tail -n 1 > "$OUT/generate.json"

# Throughput: 60 steps of the same model and batch per precision, bits/s from ThroughputMonitor
for precision in 32-true bf16-mixed; do
  "$BIN/bitlm-train" trainer.precision=$precision trainer.max_steps=60 trainer.val_check_interval=60 \
    trainer.max_time=null callbacks.model_checkpoint=null callbacks.model_export=null logger=csv \
    hydra.run.dir="$OUT/speed_$precision" > /dev/null
done
"$BIN/python" - "$OUT" <<'PY'
import csv, json, statistics, sys
out = sys.argv[1]
speeds = {}
for precision in ("32-true", "bf16-mixed"):
    rows = csv.DictReader(open(f"{out}/speed_{precision}/csv/metrics.csv"))
    values = [float(r["train/device/items_per_sec"]) for r in rows if r.get("train/device/items_per_sec")]
    speeds[precision] = statistics.median(values)
speeds["bf16_over_fp32"] = speeds["bf16-mixed"] / speeds["32-true"]
json.dump(speeds, open(f"{out}/throughput.json", "w"), indent=1)
print(json.dumps(speeds))
PY
