#!/usr/bin/env bash
# Reproduces experiments/progressive/README.md on a 2-core CPU (about 25 min):
#  1. the `small` model trained from scratch (cosine schedule, the quickstart recipe) and
#     grown from a quarter of its size (experiment=progressive), each for BUDGET of wall-clock;
#     the grown run keeps its LR constant after warm-up (its schedule's length is unknown in
#     advance: growth decides it), so a scratch run with the same constant LR is the third arm;
#  2. the scratch model extended from 288 to 576 bits of context (experiment=extend_context),
#     with plain RoPE and with position interpolation (model.rope_scale=2);
#  3. plot.py: val bpb against wall-clock seconds, growths marked (progressive.png), and
#     results.json / results.md.
#   bash experiments/progressive/run.sh [OUT] [BUDGET]   (from the repository root, after make setup)
set -euo pipefail
OUT=${1:-experiments/progressive/out}
BUDGET=${2:-00:00:05:00}
BIN=${BIN:-.venv/bin}
RUNS="$OUT/runs"
mkdir -p "$RUNS"
train() {  # NAME OVERRIDES…: one run, its JSON summary kept
  local name=$1
  shift
  "$BIN/bitlm-train" "$@" trainer.max_time="$BUDGET" trainer.val_check_interval=100 \
    seed=1 hydra.run.dir="$RUNS/$name" | tail -n 1 > "$OUT/$name.json"
}
train scratch_cosine experiment=quickstart trainer.max_steps=2300
train scratch_constant experiment=quickstart module.min_lr_ratio=1.0 trainer.max_steps=100000
train progressive experiment=progressive module.min_lr_ratio=1.0 trainer.max_steps=100000
for scale in 1 2; do
  "$BIN/bitlm-train" experiment=extend_context ckpt_path="$RUNS/scratch_cosine/model" \
    model.max_seq_len=576 model.rope_scale=$scale seed=1 \
    hydra.run.dir="$RUNS/extend_rope_scale_$scale" | tail -n 1 > "$OUT/extend_rope_scale_$scale.json"
done
"$BIN/python" experiments/progressive/plot.py "$OUT"
