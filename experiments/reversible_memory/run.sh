#!/usr/bin/env bash
# Reproduces experiments/reversible_memory/README.md: training memory and step time against
# depth (2, 4, 8, 16 layers) for the reversible, plain and checkpointed stacks of model=small.
#   bash experiments/reversible_memory/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/reversible_memory/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" memory model.trunk=flat output="$OUT/memory.json" plot="$OUT/memory.png" > /dev/null
