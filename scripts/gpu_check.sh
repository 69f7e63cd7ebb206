#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and Python with numba-cuda (torch and onnxruntime optional):
#   1. install this tree (editable, offline: no dependencies fetched, no build isolation);
#   2. the GPU-marked tests: pytest -m gpu;
#   3. the post-processing benchmark with the CUDA kernels (videos/s, per-video latency, speedup vs the numpy
#      reference, detections checked against it).
# Prints everything the README's GPU numbers come from. Exit code: that of the tests (then of the benchmark).
# Usage: scripts/gpu_check.sh [extra pytest arguments]
set -uo pipefail
cd "$(dirname "$0")/.."

source scripts/install_tree.sh

echo "== environment"
python -m ecm_edge checks
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

echo "== GPU tests (pytest -m gpu)"
python -m pytest -m gpu -q -p no:cacheprovider -rs --durations=10 "$@"
tests_status=$?

echo "== post-processing benchmark (THUMOS14-like inputs, 210 videos)"
python -m ecm_edge bench postprocess
bench_status=$?

if [ "$tests_status" -ne 0 ]; then exit "$tests_status"; fi
exit "$bench_status"
