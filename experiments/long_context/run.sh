#!/usr/bin/env bash
# Reproduces experiments/long_context/README.md: experiment=long_context (model=small's width
# and depth at 256 bytes of context, 16 × 256 bytes a step) against experiment=quickstart (32
# bytes of context, 32 × 32 bytes a step) for the same wall-clock budget, the quickstart's 7
# minutes, scored on the validation split and on English it never saw (LICENSE/AGPL-3.0.txt);
# then the recipe trained twice as long (1 800 steps), timed and scored the same way: it overfits.
# About 30 minutes on a 2-core CPU.
#   bash experiments/long_context/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/long_context/out}
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-[1]}
mkdir -p "$OUT"
"$BIN/bitlm-bench" compare budget_s=420 "seeds=$SEEDS" 'common_overrides=[]' \
  out_dir="$OUT/compare" output="$OUT/compare.json" \
  'variants=["quickstart: experiment=quickstart","long_context: experiment=long_context"]' \
  > /dev/null
"$BIN/bitlm-train" experiment=long_context trainer.max_steps=1800 trainer.val_check_interval=250 \
  logger=csv "hydra.run.dir=$OUT/full_run" \
  > "$OUT/full_run.json"
"$BIN/bitlm-eval" "ckpt_path=$OUT/full_run/model" 'files=[LICENSE/AGPL-3.0.txt]' \
  > "$OUT/full_run_eval.json"
