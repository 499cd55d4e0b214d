#!/usr/bin/env bash
# Reproduces experiments/progressive/README.md on a 2-core CPU (about 35 min):
#  1. the `small` model trained from scratch (cosine schedule, the quickstart recipe) and
#     grown from a quarter of its size (experiment=progressive), each for BUDGET of wall-clock;
#     the grown run keeps its LR constant after warm-up (its schedule's length is unknown in
#     advance: growth decides it), so a scratch run with the same constant LR is the third arm;
#  2. the scratch model extended from 288 to 576 bits of context (experiment=extend_context),
#     with plain RoPE and with position interpolation (model.rope_scale=2);
#  3. the scratch model distilled to at most 500k parameters (bitlm-distill; metrics.json), on
#     2048 or 256 telemetry-picked windows and on 256 random ones; the student's architecture
#     trained on the data alone; teacher and both students scored on held-out text;
#  4. plot.py: val bpb against wall-clock seconds, growths marked (progressive.png), and
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
train scratch_constant experiment=quickstart module.scheduler.min_lr_ratio=1.0 trainer.max_steps=100000
train progressive experiment=progressive module.scheduler.min_lr_ratio=1.0 trainer.max_steps=100000
for scale in 1 2; do
  "$BIN/bitlm-train" experiment=extend_context ckpt_path="$RUNS/scratch_cosine/model" \
    model.max_seq_len=576 model.rope_scale=$scale seed=1 \
    hydra.run.dir="$RUNS/extend_rope_scale_$scale" | tail -n 1 > "$OUT/extend_rope_scale_$scale.json"
done
distill() {  # NAME OVERRIDES…: the scratch model distilled to <= 500k parameters
  local name=$1
  shift
  "$BIN/bitlm-distill" teacher="$RUNS/scratch_cosine/model" target_params=500000 seed=1 "$@" \
    hydra.run.dir="$RUNS/distill_$name" | tail -n 1 > "$OUT/distill_$name.json"
}
distill default out_dir="$OUT/distilled"   # 2048 cluster representatives of 8192 windows
distill 256_clustered max_rounds=1 pool=2048 n_sequences=256
distill 256_random max_rounds=1 pool=256 n_sequences=256   # k = N: every window its own cluster
# the student's architecture trained on the data alone, as many steps; all three on held-out text
"$BIN/bitlm-train" experiment=quickstart model.d_model=96 model.n_heads=2 model.n_layers=2 \
  data.batch_size=16 trainer.max_steps=1500 trainer.max_time=null seed=1 \
  hydra.run.dir="$RUNS/student_scratch" | tail -n 1 > "$OUT/student_scratch.json"
"$BIN/bitlm-eval" ckpt_path="$RUNS/scratch_cosine/model" \
  "compare=[$OUT/distilled,$RUNS/student_scratch/model]" 'files=[LICENSE/AGPL-3.0.txt]' \
  | tail -n 1 > "$OUT/distill_eval.json"
"$BIN/python" experiments/progressive/plot.py "$OUT"
