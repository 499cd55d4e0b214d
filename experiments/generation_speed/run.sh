#!/usr/bin/env bash
# Reproduces experiments/generation_speed/README.md: sampling speed of model=small, single
# stream before and after batched decoding (the release before it from a git worktree), and
# the aggregate of 1, 4, 16 and 64 sequences decoded together, for both trunks.
#   bash experiments/generation_speed/run.sh [OUT] [BEFORE]   (repository root, after `make setup`)
# BEFORE: the commit measured as "before" (default: the last one before batched decoding).
# About 15 minutes on a 2-core CPU.
set -euo pipefail
OUT=${1:-experiments/generation_speed/out}
BEFORE=${2:-ca06974}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree"' EXIT
git worktree add --detach "$tree" "$BEFORE" > /dev/null
for side in before after; do
  src=src
  [[ $side == before ]] && src="$tree/src"
  PYTHONPATH="$src" "$BIN/python" experiments/generation_speed/single_stream.py \
    "$OUT/single_$side.json" --profile "$OUT/profile_$side.txt"
done
"$BIN/bitlm-bench" generate repeats=2 output="$OUT/batched_hierarchical.json" \
  plot="$OUT/batched_hierarchical.png" > /dev/null
# the flat trunk's 9 passes per byte make batch 64 at 4 k bits minutes per call: 1 k bits, once
"$BIN/bitlm-bench" generate model.trunk=flat 'contexts=[1024]' repeats=1 \
  output="$OUT/batched_flat.json" plot="$OUT/batched_flat.png" > /dev/null
