#!/usr/bin/env bash
# GPU figures of model=base (25.4 M parameters): MFU, bytes/s and peak memory at 1 k and 4 k
# bytes of context, under trainer=gpu (one GPU) and trainer=fsdp (every GPU of the machine),
# bf16-mixed and compiled (the presets' defaults). Needs a CUDA GPU; about 10 minutes on one H100.
#   bash experiments/gpu/run.sh            # writes experiments/gpu/out/{runs/,summary.json,table.md}
# STEPS=… changes the steps per run (default 120; MFU and bytes/s are medians over the logged
# windows after the first, so compilation and warm-up are not counted).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-experiments/gpu/out}
STEPS=${STEPS:-120}
mkdir -p "$OUT/runs"
for trainer in gpu fsdp; do
  for bytes in 1024 4096; do
    name="${trainer}_${bytes}"
    echo "== $name" >&2
    # 16 k bytes per step on each GPU: batch 16 at 1 k bytes of context, 4 at 4 k
    "$BIN/bitlm-train" model=base "trainer=$trainer" "model.max_seq_len=$((9 * bytes))" \
      "data.batch_size=$((16384 / bytes))" "trainer.max_steps=$STEPS" \
      "trainer.val_check_interval=$STEPS" trainer.limit_val_batches=4 \
      trainer.num_sanity_val_steps=0 logger=csv callbacks.throughput.window_size=10 \
      "hydra.run.dir=$OUT/runs/$name" > "$OUT/runs/$name.json"
  done
done
"$BIN/python" experiments/gpu/summarize.py "$OUT"
