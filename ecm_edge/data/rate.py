"""Columns per snippet: the rate at which the offline resampling feeds the network, as the data give it.

Every video is resampled to ``data.t_fixed`` columns before the network sees it (``sample_indices``), so a video
of T snippets reaches the network at ``ρ = t_fixed / T`` columns per source snippet. ``stream.columns_per_snippet``
records the ρ a stream should resample to: a number, or ``auto`` for the median ρ of the training videos, which
the trainer resolves (:func:`training_rate`) and writes into the run's config. The streaming side of the rate
(the resampler, the fallback when artifacts record none) is ``ecm_edge.runtime.resample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ecm_edge.errors import ConfigError

AUTO = "auto"


def parse_columns_per_snippet(value: str | float) -> float | None:
    """The number in ``stream.columns_per_snippet`` (None for ``auto``), or a ConfigError."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"stream.columns_per_snippet must be 'auto' or a positive number of head columns per "
                          f"source snippet (1 = the native snippet rate), got {value!r}")
    return rate


def training_rate(lengths: Sequence[int] | np.ndarray, t_fixed: int) -> float:
    """The median columns per snippet of training clips: ``t_fixed / T`` over the training videos' lengths."""
    lengths = np.asarray(lengths, np.float64)
    if lengths.size == 0 or (lengths < 1).any():
        raise ConfigError("the training rate needs the lengths of at least one non-empty training video")
    return float(np.median(t_fixed / lengths))
