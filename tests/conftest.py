"""Session setup shared by all tests (keep it small; add fixtures below with a line on what they are for).

The CUDA post-processing kernels run in numba's CUDA simulator in the default test run: no default test needs
a real GPU. numba reads NUMBA_ENABLE_CUDASIM when it is first imported, so it is set here, before any test
module is collected. A run that selects the GPU tests (``pytest -m gpu``, as ``scripts/gpu_check.sh`` does)
keeps the real device, and so does an explicit NUMBA_ENABLE_CUDASIM in the environment.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    markexpr = config.getoption("markexpr", default="") or ""
    selects_gpu_tests = "gpu" in markexpr and "not gpu" not in markexpr
    if not selects_gpu_tests:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@pytest.fixture(autouse=True)
def cli_logging():
    """The CLI installs its own handler on the ecm_edge logger and stops propagation; every test that runs it
    in-process would leave caplog blind for the tests after it, so the logger is put back after each test."""
    logger = logging.getLogger("ecm_edge")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def fast_cuda_simulator():
    """The CUDA simulator syncs its threads through the GIL: a short switch interval makes it ~10× faster."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(previous)


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory) -> Path:
    """A small training-run folder with random weights (tests/stream_helpers.py) for the stream CLI and fault tests."""
    pytest.importorskip("torch")
    from stream_helpers import save_random_deploy

    return save_random_deploy(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def stream_features(tmp_path_factory) -> Path:
    """120 snippets of features for ``stream_run``, with one action-like stretch."""
    from stream_helpers import save_features_with_an_action

    return save_features_with_an_action(tmp_path_factory.mktemp("features") / "video.npy")
