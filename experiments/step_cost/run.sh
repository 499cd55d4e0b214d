#!/usr/bin/env bash
# Reproduces experiments/step_cost/README.md: the training step of the hierarchical trunk and of
# the byte baseline (model=small's shape, 16 windows), plain and reversible stacks, at 256 and
# 1 024 bytes of context, interleaved in one process; the reversible/plain step ratio of
# model=base; peak memory of one step; torch.profiler breakdowns. One thread throughout.
# About 25 minutes on a 2-core CPU.
#   bash experiments/step_cost/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/step_cost/out}
BIN=${BIN:-.venv/bin}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
bench() { "$BIN/bitlm-bench" train-throughput mode=stacks "$@" > /dev/null; }
bench 'contexts=[256]' steps=22 untimed_steps=2 output="$OUT/stacks_small_256.json"
bench 'contexts=[1024]' steps=13 untimed_steps=1 output="$OUT/stacks_small_1024.json"
bench model=base 'contexts=[1024]' 'units=[bit]' batch_size=2 steps=7 untimed_steps=2 \
  output="$OUT/stacks_base_1024.json"
"$BIN/bitlm-bench" memory model=base 'depths=[8]' 'stacks=[plain,reversible]' batch_size=2 \
  repeats=1 output="$OUT/memory_base_1024.json" > /dev/null
"$BIN/python" experiments/step_cost/step_profile.py 1024 bf16-mixed base 1 2 2> /dev/null \
  > "$OUT/profile_base_1024_bf16-mixed.md"
for n in 256 1024; do
  for model in small byte_baseline; do
    "$BIN/bitlm-bench" memory model=$model model.max_seq_len=$((9 * n)) 'depths=[4]' \
      'stacks=[plain,reversible]' repeats=1 output="$OUT/memory_${model}_${n}.json" > /dev/null
  done
  for precision in 32-true bf16-mixed; do
    "$BIN/python" experiments/step_cost/step_profile.py $n $precision 2> /dev/null \
      > "$OUT/profile_${n}_${precision}.md"
  done
done
"$BIN/python" experiments/step_cost/table.py "$OUT" > "$OUT/table.md"
