#!/usr/bin/env bash
# Reproduces experiments/compression/README.md: what training on run-length coded inputs does to
# bpb and speed (the quickstart model, raw vs the compression ramp vs every batch compressed, the
# same 200-second wall-clock budget, seed 1), and the data-pipeline benchmarks (RLE codec,
# bitlm-prepare, the data loader against training). About 15 min on a 2-core CPU.
#   bash experiments/compression/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/compression/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" rle output="$OUT/bench_rle.json" > /dev/null
"$BIN/bitlm-bench" prepare output="$OUT/bench_prepare.json" > /dev/null
"$BIN/bitlm-bench" dataloader output="$OUT/bench_dataloader.json" > /dev/null
"$BIN/bitlm-bench" compare budget_s=200 'seeds=[1]' out_dir="$OUT" output="$OUT/compare.json" \
  'common_overrides=[]' \
  'variants=["raw: experiment=quickstart","ramp: experiment=quickstart callbacks=compression","always: experiment=quickstart module.compress_prob=1.0"]' \
  > /dev/null
