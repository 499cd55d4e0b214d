#!/usr/bin/env bash
# Reproduces experiments/diffusion/README.md: masked diffusion against the causal model at equal
# wall-clock, 3 seeds, scored on the validation split and four held-out kinds of text
# (experiments/generalization/heldout.py). Variants, each BUDGET seconds of training:
#   causal   experiment=quickstart                        the causal model
#   frame    experiment=diffusion                         frames masked, MDLM's bound, from scratch
#   bit_v1   the first release's diffusion                bits masked, mean loss, noise curriculum
#   adapted  causal for BUDGET/2 s, then experiment=diffusion finetune=true from it for BUDGET/2 s
# then greedy and sampled generations of every diffusion model, judged by the causal model
# (report.py). About 45 min on a 2-core CPU at BUDGET=180.
#   bash experiments/diffusion/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/diffusion/out}
BIN=${BIN:-.venv/bin}
BUDGET=${BUDGET:-180}
SEEDS=${SEEDS:-[1,2,3]}
"$BIN/python" experiments/generalization/heldout.py "$OUT/heldout" > /dev/null
H="$OUT/heldout"
HELD="eval_files=[$H/legal.txt,$H/changelog.md,$H/code.py,$H/manual.txt]"
compare() {  # NAME BUDGET VARIANT...
  local name=$1 budget=$2 variants
  shift 2
  variants=$(printf '"%s",' "$@")
  "$BIN/bitlm-bench" compare "budget_s=$budget" "seeds=$SEEDS" "$HELD" 'common_overrides=[]' \
    out_dir="$OUT/$name" output="$OUT/$name.json" "variants=[${variants%,}]" > /dev/null
}
compare full "$BUDGET" "causal: experiment=quickstart" "frame: experiment=diffusion" \
  "bit_v1: experiment=diffusion model.diffusion_unit=bit module.diffusion_weighting=mean callbacks=diffusion"
compare half $((BUDGET / 2)) "causal_half: experiment=quickstart"
compare adapted $((BUDGET / 2)) \
  "adapted: experiment=diffusion finetune=true ckpt_path=$OUT/half/causal_half/seed_\${seed}/model"
"$BIN/python" experiments/diffusion/report.py "$OUT"
