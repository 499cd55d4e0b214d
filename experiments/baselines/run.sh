#!/usr/bin/env bash
# Reproduces experiments/baselines/README.md: the bit model (reversible), the same model with a
# plain stack, and the byte-level baseline, each trained for the same 10-minute wall-clock budget
# (experiment=quickstart recipe) with seeds 1, 2, 3, then scored on LICENSE/AGPL-3.0.txt (never
# trained on) and on the validation split. About 1 h 45 min on a 2-core CPU.
#   bash experiments/baselines/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/baselines/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" compare budget_s=600 out_dir="$OUT" output="$OUT/compare.json" \
  'variants=["bit: model=small model.trunk=flat","bit_plain: model=small model.trunk=flat model.reversible=false","byte_baseline: model=byte_baseline"]' \
  > /dev/null
