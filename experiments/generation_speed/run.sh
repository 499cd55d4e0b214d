#!/usr/bin/env bash
# Reproduces experiments/generation_speed/README.md: sampling speed of model=small with and
# without the KV cache, after 1k and 4k bits of context.
#   bash experiments/generation_speed/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/generation_speed/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" generate model.trunk=flat output="$OUT/generate.json" plot="$OUT/generate.png" > /dev/null
