#!/usr/bin/env bash
# Reproduces experiments/diffusion/v1/README.md (the first release's bit diffusion, which
# experiment=diffusion meant then: the V1 overrides below): the causal quickstart model and diffusion models
# with each noise schedule (linear with and without the noise curriculum), each trained for the
# same 300-second wall-clock budget (seed 1) and scored on LICENSE/AGPL-3.0.txt and the
# validation split; then denoising accuracy against noise level, samples at 8 and 16 denoising
# steps judged by the causal model, and infilling. About 35 min on a 2-core CPU.
#   bash experiments/diffusion/v1/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/diffusion/v1/out}
V1='model.diffusion_unit=bit module.diffusion_weighting=mean callbacks=diffusion'
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
"$BIN/bitlm-bench" compare budget_s=300 'seeds=[1]' out_dir="$OUT" output="$OUT/compare.json" \
  'common_overrides=[]' \
  "variants=[\"causal: experiment=quickstart\",\"linear: experiment=diffusion $V1 model.noise_schedule=linear\",\"cosine: experiment=diffusion $V1 model.noise_schedule=cosine\",\"exp: experiment=diffusion $V1 model.noise_schedule=exp\",\"linear_no_curriculum: experiment=diffusion $V1 callbacks.diffusion_curriculum.end=1.0\"]" \
  > /dev/null
# the commands a user runs, on the linear model
MODEL="$OUT/linear/seed_1/model"
"$BIN/bitlm-eval" ckpt_path="$MODEL" 'files=[LICENSE/AGPL-3.0.txt]' > "$OUT/eval_linear_agpl.json"
for steps in 8 16; do
  "$BIN/bitlm-generate" ckpt_path="$MODEL" mode=diffusion diffusion_steps=$steps max_new_bytes=64 \
    seed=0 > "$OUT/generate_linear_${steps}.json"
done
"$BIN/bitlm-generate" ckpt_path="$MODEL" mode=diffusion diffusion_steps=16 temperature=0 \
  'prompt="The return statement "' 'suffix=" the function."' max_new_bytes=8 > "$OUT/infill_linear.json"
"$BIN/python" experiments/diffusion/v1/diffusion_report.py "$OUT" "$OUT/causal/seed_1" \
  linear="$OUT/linear/seed_1" cosine="$OUT/cosine/seed_1" exp="$OUT/exp/seed_1" \
  linear_no_curriculum="$OUT/linear_no_curriculum/seed_1"
