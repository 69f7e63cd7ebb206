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


_ECM_LOGGER = logging.getLogger("ecm_edge")
_PRISTINE_LOGGING = (list(_ECM_LOGGER.handlers), _ECM_LOGGER.level, _ECM_LOGGER.propagate)


def _restore_pristine_logging() -> None:
    handlers, level, propagate = _PRISTINE_LOGGING
    _ECM_LOGGER.handlers[:] = handlers
    _ECM_LOGGER.setLevel(level)
    _ECM_LOGGER.propagate = propagate


@pytest.fixture(autouse=True)
def cli_logging():
    """The CLI installs its own handler on the ecm_edge logger and stops propagation, which leaves caplog blind.
    A module-scoped fixture that runs the CLI in-process does so before this fixture starts, so the logger is put
    back to its state at import time both before and after each test, not to whatever the test started with."""
    _restore_pristine_logging()
    yield
    _restore_pristine_logging()


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
