#!/usr/bin/env bash
# The training-recipe study at the paper's network width (H = 2048) on a CUDA GPU: scripts/recipe_study.py with
# --hidden 2048 --device cuda, by default the first set and seed with the paper recipe (150 epochs), thumos14_lite
# and thumos14_fast; about 2 s per epoch on an H200, a minute to synthesize each set.
# Usage: scripts/gpu_recipe_study.sh RESULTS.jsonl [recipe_study.py arguments, e.g. --sets d05 d07 --seeds 16 17]
#   Runs already in RESULTS are skipped, so the script resumes. WORK (default runs/recipe_study) keeps the sets
#   and the runs; TIMELINE, when set, is the folder of the real THUMOS14 annotations (synth --timeline); DEVICE
#   (default cuda) =cpu rehearses it, e.g. with --preset small --extra train.epochs=2.
set -euo pipefail
cd "$(dirname "$0")/.."
results="${1:?usage: scripts/gpu_recipe_study.sh RESULTS.jsonl [recipe_study.py arguments]}"
shift

source scripts/install_tree.sh

timeline=()
if [ -n "${TIMELINE:-}" ]; then timeline=(--timeline "$TIMELINE"); fi
defaults=(--sets d05 --seeds 16 --recipes fast lite paper)
if [ $# -gt 0 ]; then defaults=(); fi

echo "== recipe study, H = 2048"
python scripts/recipe_study.py --work "${WORK:-runs/recipe_study}" --results "$results" --hidden 2048 \
    --device "${DEVICE:-cuda}" "${timeline[@]}" "${defaults[@]}" "$@"
python scripts/recipe_study.py --work "${WORK:-runs/recipe_study}" --results "$results" --hidden 2048 --report \
    --recipes paper lite fast
