#!/usr/bin/env bash
# The paper-config mAP table on a CUDA GPU: the synthetic THUMOS14-like set (`ecm-edge synth --preset thumos14`),
# the `thumos14` config (150 epochs, evaluated on held-out training videos every `train.eval_every` epochs),
# then test mAP of the best and of the last epoch. About 2 s per epoch on an H200, 1 minute of synthesis.
# Usage: scripts/gpu_paper_table.sh [OUT_DIR] [--set section.key=value ...]
#   OUT_DIR (default runs/paper) keeps the data and the run; an existing dataset there is reused and an
#   unfinished run is resumed. PRESET, CONFIG and DEVICE (thumos14, thumos14, cuda) change what runs, e.g.
#   PRESET=small CONFIG=small DEVICE=cpu for a rehearsal on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/paper}"
[ $# -gt 0 ] && shift
data="$out/data"
run="$out/train/paper"

source scripts/install_tree.sh

echo "== data"
if [ ! -f "$data/synth.json" ]; then
    python -m ecm_edge synth --preset "${PRESET:-thumos14}" -o "$data"
fi

echo "== train"
if [ -f "$run/last.pt" ]; then
    python -m ecm_edge train --resume "$run" --device "${DEVICE:-cuda}" --no-progress "$@"
else
    python -m ecm_edge train --config "${CONFIG:-thumos14}" --data "$data" --project "$out" --name paper \
        --device "${DEVICE:-cuda}" --no-progress "$@"
fi

echo "== test mAP, best epoch"
python -m ecm_edge eval --checkpoint "$run/best.pt" --data "$data" --split test
echo "== test mAP, last epoch"
python -m ecm_edge eval --checkpoint "$run/last.pt" --data "$data" --split test
