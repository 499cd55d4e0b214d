#!/usr/bin/env bash
# Reproduces experiments/microbench/README.md: framework overhead (Lightning vs a plain loop,
# fp32 and bf16), chunked vs unchunked attention at 4k and 16k bits, and the bit codec.
#   bash experiments/microbench/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/microbench/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" train-throughput model.trunk=flat output="$OUT/train-throughput.json" > /dev/null
"$BIN/bitlm-bench" attention output="$OUT/attention.json" plot="$OUT/attention.png" > /dev/null
"$BIN/bitlm-bench" codec output="$OUT/codec.json" > /dev/null
