"""Causal counterpart of the offline uniform resampling: source snippets in, head columns out.

Offline, every video is resampled to ``data.t_fixed`` snippets before the network sees it, in training and in
testing alike (``ecm_edge.data.dataset.sample_indices``: column i reads snippet ``floor(i · T / t_fixed)``). The
network therefore learned its temporal convolutions on clips with ``ρ = t_fixed / T`` columns per source
snippet (``ecm_edge.data.rate``): snippets repeat when ρ > 1 (short videos, as in THUMOS14) and are skipped when
ρ < 1 (long ones, as in ActivityNet). Fed one column per snippet, the same network sees motion about ρ times
faster than it learned to and its CAS degrades (docs/design.md).

A stream cannot know T, so it resamples at one fixed rate: ``stream.columns_per_snippet``. Column i reads
snippet ``floor(i / ρ)`` — exactly the offline indices of a video with ``t_fixed / T = ρ`` — and covers the
positions ``[i / ρ, (i + 1) / ρ)`` in snippet units, mapped to source time through the snippet it starts in.
``auto`` means the median ρ of the training videos: ``ecm-edge train`` resolves it and records the number in the
run's config, so a deploy or export folder carries the rate its network was trained at.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecm_edge.config import Config
from ecm_edge.data.rate import AUTO, parse_columns_per_snippet
from ecm_edge.errors import ConfigError

log = logging.getLogger("ecm_edge")

# AUTO and parse_columns_per_snippet live with the training rate (ecm_edge.data.rate); the runtime reads them here
__all__ = ["AUTO", "NATIVE_RATE", "ColumnPlan", "ColumnResampler", "columns_per_snippet",
           "parse_columns_per_snippet", "stream_indices"]

NATIVE_RATE = 1.0  # one column per snippet: what "auto" falls back to when the artifacts record no rate
# column / ρ lands a rounding error below a whole number when ρ = t_fixed / T is not exact in binary; true
# quotients short of a whole number are at least 1 / t_fixed below it
INDEX_SLACK = 1e-9


def columns_per_snippet(cfg: Config) -> float:
    """The stream's resampling rate ρ; ``auto`` left unresolved (artifacts that predate the setting, a shipped
    config) falls back to the native rate with a note."""
    rate = parse_columns_per_snippet(cfg.stream.columns_per_snippet)
    if rate is None:
        log.info("stream.columns_per_snippet is auto but these artifacts record no training rate; streaming one "
                 "column per snippet (set --set stream.columns_per_snippet=N, N ≈ t_fixed / typical video "
                 "length in snippets, to match how the network was trained)")
        return NATIVE_RATE
    return rate


def stream_indices(length: int, rate: float) -> np.ndarray:
    """The snippet each head column reads when a whole ``length``-snippet video is streamed at ``rate``: the
    causal counterpart of ``sample_indices`` (⌈length · rate⌉ columns)."""
    return ColumnResampler(rate).plan(range(length), range(1, length + 1)).snippet


@dataclass
class ColumnPlan:
    """What the head gets for a batch of source snippets: per column, the snippet it reads (an index into the
    batch), its source-time span, and the end of that snippet (when the column arrived)."""

    snippet: np.ndarray  # int64 [M]
    starts: list[float]
    ends: list[float]
    arrivals: list[float]

    def __len__(self) -> int:
        return len(self.snippet)


class ColumnResampler:
    """Maps source snippets to head columns at ``rate`` columns per snippet, across pushes (stateful)."""

    def __init__(self, rate: float):
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"columns per snippet must be a positive number, got {rate!r}")
        self.rate = float(rate)
        self.reset()

    def reset(self) -> None:
        """Start a new stream: the next snippet is snippet 0, the next column column 0."""
        self._snippets = 0
        self._columns = 0

    def plan(self, starts: Sequence[float], ends: Sequence[float]) -> ColumnPlan:
        """The columns that the next ``len(starts)`` snippets (with their source times) complete."""
        snippet: list[int] = []
        col_starts: list[float] = []
        col_ends: list[float] = []
        arrivals: list[float] = []
        for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
            j = self._snippets + k
            duration = end - start
            while self._snippet_of(self._columns) <= j:
                position = self._columns / self.rate  # in snippet units, within snippet j
                snippet.append(k)
                col_starts.append(start + (position - j) * duration)
                col_ends.append(start + (position + 1 / self.rate - j) * duration)
                arrivals.append(end)
                self._columns += 1
        self._snippets += len(starts)
        return ColumnPlan(np.asarray(snippet, np.int64), col_starts, col_ends, arrivals)

    def _snippet_of(self, column: int) -> int:
        """``floor(column / ρ)``, robust to ρ's rounding where the exact quotient is a whole number."""
        return math.floor(column / self.rate + INDEX_SLACK)
