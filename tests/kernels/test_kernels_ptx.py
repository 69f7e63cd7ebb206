"""Every CUDA kernel compiles to PTX for the GPUs ecm-edge targets, without a GPU.

Compute capabilities 7.5 (T4), 8.7 (Jetson Orin) and 9.0 (H100/H200). The compilation runs in a subprocess
because the default test session runs numba's CUDA simulator (tests/conftest.py), which has no compiler. The
products that decide runs must stay separately rounded: no fused multiply-add in the PTX that computes them, in
float64 (the clean mode's arithmetic) or float32 (OpenCV's, in ecm mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CAPABILITIES = [(7, 5), (8, 7), (9, 0)]
NO_NVVM = 77  # exit code of the script when numba-cuda's NVVM library is missing
# Every kernel of ecm_edge.kernels.cuda, listed here so that a renamed or added kernel fails a test instead of dropping out.
KERNELS = ("row_stats", "interpolate", "prefix_scan", "count_runs", "find_runs", "score_runs", "nms_order",
           "nms_mask", "nms_sweep", "gather")
RUN_DECIDING = ("interpolate", "score_runs", "nms_mask")  # kernels whose products decide runs and NMS

SCRIPT = f"""
import json, sys
try:
    from numba import cuda
    from numba.cuda.cudadrv.error import NvvmSupportError
except ImportError as exc:
    print(exc); sys.exit({NO_NVVM})
from ecm_edge.kernels.cuda import THREADS, kernels
from ecm_edge.kernels.cuda_kernels import KERNEL_NAMES, kernel_signatures
built = kernels(THREADS)
report = {{}}
signatures = kernel_signatures("float32")  # the CAS dtype engines produce
for name in KERNEL_NAMES:
    for cc in {CAPABILITIES!r}:
        try:
            ptx, _ = cuda.compile_ptx(getattr(built, name).py_func, signatures[name], cc=cc)
        except NvvmSupportError as exc:
            print(exc); sys.exit({NO_NVVM})
        report[f"{{name}}/{{cc[0]}}.{{cc[1]}}"] = {{"target": f"sm_{{cc[0]}}{{cc[1]}}" in ptx,
                                                 "f64_fma": "fma.rn.f64" in ptx, "f32_fma": "fma.rn.f32" in ptx}}
report["built"] = sorted(vars(built))
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def ptx_report() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode == NO_NVVM:
        pytest.skip(f"numba-cuda's NVVM library is missing here ({done.stdout.strip()}); "
                    "install numba-cuda[cu13] to compile CUDA kernels")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kernel_list_is_complete():
    from ecm_edge.kernels.cuda_kernels import KERNEL_NAMES, kernel_signatures

    assert tuple(KERNEL_NAMES) == KERNELS
    assert set(kernel_signatures("float32")) == set(KERNELS) == set(kernel_signatures("float64"))


def test_every_kernel_compiles_for_every_target(ptx_report):
    assert ptx_report["built"] == sorted(KERNELS)
    for name in KERNELS:
        for major, minor in CAPABILITIES:
            assert ptx_report[f"{name}/{major}.{minor}"]["target"], (name, major, minor)


def test_run_deciding_arithmetic_has_no_fused_multiply_add(ptx_report):
    for name in RUN_DECIDING:
        for major, minor in CAPABILITIES:
            compiled = ptx_report[f"{name}/{major}.{minor}"]
            assert not compiled["f64_fma"] and not compiled["f32_fma"], (name, major, minor)
