#!/usr/bin/env bash
# Reproduces experiments/hierarchical/README.md: the byte-level baseline, the hierarchical trunk
# (tree and transformer in-frame decoders) and the flat bit trunk, all 4 layers × 192 wide, each
# trained for the same 5-minute wall-clock budget (experiment=quickstart recipe) with seeds 1, 2,
# 3 and scored on LICENSE/AGPL-3.0.txt and the validation split; then the training throughput of
# the flat and hierarchical trunks and the hierarchical trunk's sampling speed. About 75 min on a
# 2-core CPU.
#   bash experiments/hierarchical/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/hierarchical/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" compare budget_s=300 out_dir="$OUT" output="$OUT/compare.json" \
  'variants=["byte_baseline: model=byte_baseline","hierarchical: model=small model.trunk=hierarchical","hierarchical_transformer: model=small model.trunk=hierarchical model.local_decoder=transformer","flat: model=small model.trunk=flat"]' \
  > /dev/null
for trunk in flat hierarchical; do
  "$BIN/bitlm-bench" train-throughput model.trunk=$trunk output="$OUT/throughput_$trunk.json" > /dev/null
done
"$BIN/bitlm-bench" generate output="$OUT/generate_hierarchical.json" > /dev/null
