#!/usr/bin/env bash
# Reproduces experiments/telemetry/README.md: the quickstart recipe with and without the K/C/S
# regularisers (all three, and each alone) and with ACT halting, each trained for the same
# 150-second wall-clock budget with seeds 1, 2, 3 and scored on LICENSE/AGPL-3.0.txt and the
# validation split; then the cost of telemetry per training step and the speed of LZ76; then
# the safety gate and drift detector on a run driven off course. About 50 min on a 2-core CPU.
#   bash experiments/telemetry/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/telemetry/out}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" compare budget_s=150 out_dir="$OUT" output="$OUT/compare.json" \
  'common_overrides=[]' \
  'variants=["quickstart: experiment=quickstart","kcs: experiment=telemetry","K: experiment=quickstart module.lambda_K=0.1","C: experiment=quickstart module.lambda_C=0.1","S: experiment=quickstart module.lambda_S=0.1","act: experiment=quickstart model.use_act=true"]' \
  > /dev/null
"$BIN/bitlm-bench" telemetry output="$OUT/bench_telemetry.json" > /dev/null
# the safety gate on a run driven off course by a learning rate 100x the quickstart's
"$BIN/bitlm-train" experiment=quickstart module.optimizer.lr=0.3 module.scheduler.warmup_steps=1 trainer.max_steps=400 \
  trainer.val_check_interval=100 trainer.log_every_n_steps=10 callbacks=safety \
  callbacks.safety_gate.burn_in=50 callbacks.safety_gate.action=warn hydra.run.dir="$OUT/collapse_warn" \
  > "$OUT/collapse_warn.json"
"$BIN/python" experiments/telemetry/telemetry_curves.py "$OUT" quickstart_seed1="$OUT/quickstart/seed_1" \
  kcs_seed1="$OUT/kcs/seed_1" act_seed1="$OUT/act/seed_1" collapse_lr0.3="$OUT/collapse_warn"
