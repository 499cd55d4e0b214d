# Shared by the studies' run.sh scripts (source it after setting OUT and BIN):
# the held-out texts of experiments/generalization/heldout.py and one `bitlm-bench compare` call.

# held_out: writes the four held-out texts under $OUT/heldout and sets HELD to their eval_files
held_out() {
  "$BIN/python" experiments/generalization/heldout.py "$OUT/heldout" > /dev/null
  local h="$OUT/heldout"
  HELD="eval_files=[$h/legal.txt,$h/changelog.md,$h/code.py,$h/manual.txt]"
}

# compare NAME BUDGET SEEDS VARIANT...: the variants ("name: overrides") trained for BUDGET
# seconds per seed, scored on $HELD, into $OUT/NAME/ and $OUT/NAME.json; the array EXTRA holds
# further compare overrides (may be empty)
compare() {
  local name=$1 budget=$2 seeds=$3 variants
  shift 3
  variants=$(printf '"%s",' "$@")
  "$BIN/bitlm-bench" compare "budget_s=$budget" "seeds=$seeds" "$HELD" out_dir="$OUT/$name" \
    output="$OUT/$name.json" "variants=[${variants%,}]" "${EXTRA[@]}" > /dev/null
}
