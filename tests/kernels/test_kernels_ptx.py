"""Every CUDA kernel compiles to PTX for the GPUs ecm-edge targets, without a GPU.

Compute capabilities 7.5 (T4), 8.7 (Jetson Orin) and 9.0 (H100/H200). The compilation runs in a subprocess
because the default test session runs numba's CUDA simulator (tests/conftest.py), which has no compiler. The
products that decide runs must stay separately rounded: no fused multiply-add in the PTX that computes them, in
float64 (the clean mode's arithmetic) or float32 (OpenCV's, in ecm mode).
"""

from __future__ import annotations

import pytest
from ptx_helpers import ptx_report as compile_report

CAPABILITIES = [(7, 5), (8, 7), (9, 0)]
# Every kernel of ecm_edge.kernels.cuda, listed here so that a renamed or added kernel fails a test instead of dropping out.
KERNELS = ("row_stats", "interpolate", "prefix_scan", "count_runs", "find_runs", "score_runs", "nms_order",
           "nms_mask", "nms_sweep", "gather")
RUN_DECIDING = ("interpolate", "score_runs", "nms_mask")  # kernels whose products decide runs and NMS

SETUP = """
from ecm_edge.kernels.cuda import THREADS, kernels
from ecm_edge.kernels.cuda_kernels import KERNEL_NAMES, kernel_signatures
built = kernels(THREADS)
signatures = kernel_signatures("float32")  # the CAS dtype engines produce
"""


@pytest.fixture(scope="module")
def ptx_report() -> dict:
    return compile_report(SETUP, CAPABILITIES)


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
