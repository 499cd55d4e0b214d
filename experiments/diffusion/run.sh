#!/usr/bin/env bash
# Reproduces experiments/diffusion/README.md: masked diffusion against the causal model at equal
# wall-clock, 3 seeds, scored on the validation split and four held-out kinds of text
# (experiments/generalization/heldout.py). Variants, each BUDGET seconds of training:
#   causal   experiment=quickstart                        the causal model
#   frame    experiment=diffusion                         frames masked, MDLM's bound, from scratch
#   bit_v1   the first release's diffusion                bits masked, mean loss, noise curriculum
#   adapted  causal for BUDGET/2 s, then experiment=diffusion finetune=true from it for BUDGET/2 s
# then greedy and sampled generations of every diffusion model, judged by the causal model
# (report.py). About 50 min on a 2-core CPU (BUDGET=150 s, the README's figures; SEEDS=[1,2,3]).
#   bash experiments/diffusion/run.sh [OUT]   (from the repository root, after `make setup`)
set -euo pipefail
OUT=${1:-experiments/diffusion/out}
BIN=${BIN:-.venv/bin}
BUDGET=${BUDGET:-150}
SEEDS=${SEEDS:-[1,2,3]}
EXTRA=('common_overrides=[]')  # each variant names its experiment
source experiments/compare.sh
held_out
compare full "$BUDGET" "$SEEDS" "causal: experiment=quickstart" "frame: experiment=diffusion" \
  "bit_v1: experiment=diffusion model.diffusion_unit=bit module.diffusion_weighting=mean callbacks=diffusion"
compare half $((BUDGET / 2)) "$SEEDS" "causal_half: experiment=quickstart"
for seed in $(tr -d '[]' <<< "$SEEDS" | tr ',' ' '); do  # each seed from its own causal model
  compare "adapted_$seed" $((BUDGET / 2)) "[$seed]" \
    "adapted: experiment=diffusion finetune=true ckpt_path=$OUT/half/causal_half/seed_$seed/model"
done
"$BIN/python" experiments/diffusion/report.py "$OUT"
