"""Wall-clock timing of a call, shared by the benchmarks (``ecm_edge.bench``) and the export's validation
(``ecm_edge.export.validate``). numpy only."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_call(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, min_seconds: float = 0.0) -> np.ndarray:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` calls (continues until min_seconds is spent)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.asarray(times)
