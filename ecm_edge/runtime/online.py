"""Causal post-processing: CAS columns in, final segments out (docs/design.md §7).

The offline post-processing (§5) looks at the whole video; a stream only has the past. The causal replacements:

- **Video scores**: softmax of the per-class top-k mean over the last ``horizon`` CAS columns, with
  ``k = int(r · n)`` for the ``n`` columns in the horizon (r = ``model.topk_ratio``). The network learned its
  top-k pooling as the top fraction r of a whole clip (k = T_fixed · r of T_fixed resampled snippets); the
  horizon plays the clip's part, so the fraction, not the count, carries over (a fixed k = T_fixed · r clipped
  to the horizon dilutes the score: docs/design.md, Decisions).
- **Normalization**: each new column is normalized with the running ``relu(max)`` / ``relu(min)`` of its class
  over the horizon (Δ ≤ 0 → 1), once, when it arrives; stored values are never revised.
- **Candidates**: per class and activation threshold θ, a candidate opens when the normalized score rises to θ
  (and above 0) and closes at the last column before it falls below. Scoring and suppression are the offline
  reference's own rules (``ecm_edge.kernels.reference``): the OIC outer window ``outer_window``
  (``[int(s − λ·len), s − 1] ∪ [e + 1, int(e + λ·len) − 1]``); once its right part has arrived (at flush:
  clipped to the end of the stream) the candidate is scored by ``oic_score`` (``inner − outer + γ · video
  score``, the outer mean on the ``thresholded`` values), dropped when the class's current video score is below
  ``post.class_threshold``, and compared with the segments of its class already emitted by ``interval_iou`` in
  the ``stream.mode`` convention and the NMS rule ``suppresses``. Candidates ready at the same step are taken
  highest score first, as the offline greedy NMS does, ranked as offline by the score rounded to 2⁻²⁰
  (``ranking_key``; equal keys in the order the candidates closed). What is emitted is final.
- **Arithmetic with one order**: the top-k values are summed in float64 from the largest down, outer windows
  in float64 in column order, the softmax with the C library's ``exp`` and its denominator in class order, so
  the slot-array kernels (``ecm_edge.runtime.causal``) reproduce these numbers to the bit on the CPU.

- **Score source** (``post.score_source``, as offline): ``cas`` normalizes the CAS column; ``weights`` the
  transition-weight column W with W's running min/max; ``fused`` averages the two normalized columns and
  normalizes that mean once more with its own running min/max over the horizon (the offline kernels' step 1 on
  the fused row). The video scores always come from the CAS.
- **Warm-up**: the first ``warmup`` columns of a stream are held back and normalized together with the
  statistics of all of them once the last has arrived (one at a time, the first columns would be stretched by
  the min/max of a handful and pass spurious candidates); their candidates are judged with the video scores of
  column ``warmup``. Nothing is emitted before. A flush releases a shorter stream's columns the same way and
  judges everything left with the last scores (docs/design.md, Decisions).

Everything works at column resolution: a segment covers the source times of its first and last columns. The
columns are the head's (``ecm_edge.runtime.resample``: ρ per source snippet, so ``horizon`` and ``warmup`` here
count columns). Outer windows reach back at most ``horizon`` columns (the retained history); only segments
longer than ``horizon / (1 + 2λ)`` columns see a truncated outer window. The ``ecm`` mode's index-0 quirk
depends on the whole row and has no causal equivalent; ``stream.mode`` selects the IoU convention only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecm_edge.architecture import topk_count
from ecm_edge.config import Config
from ecm_edge.errors import ConfigError, EcmEdgeError
from ecm_edge.kernels.detections import ranking_key
from ecm_edge.kernels.params import PostParams
from ecm_edge.kernels.reference import (
    interval_iou,
    oic_score,
    outer_reach,
    outer_window,
    stretch_like,
    suppresses,
    thresholded,
)
from ecm_edge.kernels.score_rows import check_score_source
from ecm_edge.runtime import events as ev

log = logging.getLogger("ecm_edge")


@dataclass(frozen=True)
class OnlineParams:
    """The numbers of the causal post-processing: the offline ones (``post``, in the ``stream.mode`` IoU
    convention) plus the horizon, k of the top-k and whether to send early alerts."""

    post: PostParams
    horizon: int  # columns of history for video scores, normalization and outer windows
    topk_ratio: float  # r: the video score averages the top int(r · n) of the n columns in the horizon
    warmup: int = 0  # columns seen before the first emission
    emit_open: bool = False
    score_source: str = "cas"  # "cas" | "weights" | "fused" (ecm_edge.kernels.score_rows)

    @classmethod
    def from_config(cls, cfg: Config, columns_per_snippet: float = 1.0) -> OnlineParams:
        """The config's parameters for a head that delivers ``columns_per_snippet`` columns per source snippet
        (``ecm_edge.runtime.resample``): ``stream.horizon`` and ``stream.warmup`` count source snippets, so
        they cover the same stretch of time at any rate."""
        post = PostParams.from_config(cfg.post).replace(mode=cfg.stream.mode)
        return cls(post, horizon=max(1, round(cfg.stream.horizon * columns_per_snippet)),
                   topk_ratio=cfg.model.topk_ratio, warmup=round(cfg.stream.warmup * columns_per_snippet),
                   emit_open=cfg.stream.emit_open, score_source=check_score_source(cfg.post.score_source))


class CausalScorer:
    """Video scores and per-class normalization over a sliding horizon of CAS columns."""

    def __init__(self, num_classes: int, horizon: int, topk_ratio: float, score_source: str = "cas"):
        if horizon < 1:
            raise ConfigError(f"stream.horizon must be at least 1 column, got {horizon}")
        if not 0 < topk_ratio <= 1:
            raise ConfigError(f"model.topk_ratio must be in (0, 1], got {topk_ratio}")
        self.horizon, self.topk_ratio = horizon, topk_ratio
        self.score_source = check_score_source(score_source)
        self._ring = np.zeros((horizon, num_classes), np.float32)
        self._weights = np.zeros((horizon, num_classes), np.float32)  # W columns (weights, fused)
        self._fused = np.zeros((horizon, num_classes), np.float32)  # fused columns before their last stretch
        self._seen = 0

    def reset(self) -> None:
        self._seen = 0

    def push(self, cas_columns: np.ndarray, weight_columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Add CAS columns ``[M, C]`` (and their transition weights ``[M, C]``, needed unless the source is
        ``cas``); return (video scores ``[C]`` after the last, the score columns ``[M, C]`` normalized with the
        running statistics after the last). One column at a time (``[C]`` in, ``[C]`` out) is the stream;
        several at once are the warm-up, normalized together once it is complete."""
        if np.ndim(cas_columns) == 1:
            scores, normalized = self.push(cas_columns[None], None if weight_columns is None else weight_columns[None])
            return scores, normalized[0]
        slots = (self._seen + np.arange(len(cas_columns))) % self.horizon
        self._write(self._ring, slots, cas_columns)
        self._seen += len(cas_columns)
        filled = min(self._seen, self.horizon)
        window = self._ring[:filled]
        scores = softmax(top_k_means(window, topk_count(len(window), self.topk_ratio)))
        normalized = stretch_like(cas_columns, window, axis=0)
        if self.score_source == "cas":
            return scores, normalized
        if weight_columns is None:
            raise EcmEdgeError(f"stream score source {self.score_source!r} needs the transition weights of every "
                               "column; the head gives none")
        self._write(self._weights, slots, weight_columns)
        normalized_w = stretch_like(weight_columns, self._weights[:filled], axis=0)
        if self.score_source == "weights":
            return scores, normalized_w
        fused = 0.5 * (normalized + normalized_w)
        self._write(self._fused, slots, fused)
        return scores, stretch_like(fused, self._fused[:filled], axis=0)

    @staticmethod
    def _write(ring: np.ndarray, slots: np.ndarray, columns: np.ndarray) -> None:
        """Store columns at their ring slots, in order (with more columns than slots the newest stay)."""
        for slot, column in zip(slots, columns, strict=True):
            ring[slot] = column


def top_k_means(window: np.ndarray, k: int) -> np.ndarray:
    """Per class (axis 1), the mean of the k largest values of ``window`` ``[n, C]``: those values sorted
    descending and summed one after another in float64. The order is part of the contract: every kernel
    (``ecm_edge.kernels.causal_cpu``, ``causal_cuda``) sums them in it, so all get the same bits."""
    top = np.sort(window, axis=0)[::-1][:k]
    return sequential_sum(top) / k


def softmax(means: np.ndarray) -> np.ndarray:
    """Softmax over classes in float64: ``exp`` per class with the C library's ``math.exp`` (numpy's vectorized
    exp rounds some results differently from it, and the compiled kernels call the C library's), the
    denominator summed in class order."""
    shifted = means - means.max()
    exps = np.array([math.exp(value) for value in shifted.tolist()], np.float64)
    return exps / sequential_sum(exps)


def sequential_sum(values: np.ndarray) -> np.ndarray:
    """Sum along axis 0 in float64, one value after another (numpy's pairwise summation uses another order)."""
    if len(values) == 0:
        return np.zeros(np.shape(values)[1:], np.float64)
    return np.cumsum(values, axis=0, dtype=np.float64)[-1]


@dataclass
class _Candidate:
    class_id: int
    threshold_index: int  # into the activation thresholds
    first: int  # index of the first and last column
    last: int
    inner_sum: float
    start: float  # source time of the first column's start and the last column's end
    end: float
    ready_at: int  # the index whose arrival completes the right outer window

    @property
    def length(self) -> int:
        return self.last - self.first + 1


class SegmentTracker:
    """Online multi-threshold candidates per class, OIC scoring and NMS against emitted segments."""

    def __init__(self, params: OnlineParams, class_names: Sequence[str]):
        self.params, self.post, self.class_names = params, params.post, list(class_names)
        self.thresholds = np.asarray(params.post.act_thresholds, np.float32)
        self.history = max(1, params.horizon)
        self.reset()

    def reset(self) -> None:
        c, j = len(self.class_names), len(self.thresholds)
        self._values = np.zeros((self.history, c), np.float32)  # normalized columns, ring over the history
        self._index = -1  # index of the last column
        self._open_first = np.full((c, j), -1, np.int64)
        self._open_sum = np.zeros((c, j), np.float64)
        self._open_start = np.zeros((c, j), np.float64)
        self._pending: list[_Candidate] = []
        self._emitted: list[list[tuple[float, float]]] = [[] for _ in range(c)]
        self._last_end = 0.0

    def update(self, normalized: np.ndarray, video_scores: np.ndarray, start: float, end: float,
               now: float | None = None) -> list[ev.Event]:
        """Add the next normalized column (with its source times); return the events it completes.

        ``now`` is the source time of the newest snippet (later than ``end`` by the head's delay); segment
        latencies are measured against it.
        """
        t = self._index = self._index + 1
        self._values[t % self.history] = normalized
        events = self._track_runs(t, normalized, video_scores, start)
        self._last_end = end
        if t + 1 < self.params.warmup:
            return events
        ready = [cand for cand in self._pending if cand.ready_at <= t]
        if ready:
            self._pending = [cand for cand in self._pending if cand.ready_at > t]
            events += self._emit(ready, video_scores, end if now is None else now, stream_end=None)
        return events

    def flush(self, video_scores: np.ndarray | None, now: float | None = None) -> list[ev.Event]:
        """End of stream: close open candidates at the last column, score everything pending, start afresh."""
        events: list[ev.Event] = []
        if self._index >= 0 and video_scores is not None:
            for c, j in zip(*np.nonzero(self._open_first >= 0), strict=True):
                self._close(int(c), int(j), self._index, self._last_end)
            now = self._last_end if now is None else now
            events = self._emit(self._pending, video_scores, now, stream_end=self._index)
        self.reset()
        return events

    # -- candidates -------------------------------------------------------------------------------------------
    def _track_runs(self, t: int, normalized: np.ndarray, video_scores: np.ndarray, start: float) -> list[ev.Event]:
        active = (normalized[:, None] >= self.thresholds[None, :]) & (normalized[:, None] > 0)
        was_open = self._open_first >= 0
        for c, j in zip(*np.nonzero(was_open & ~active), strict=True):
            self._close(int(c), int(j), t - 1, self._last_end)
        opening = active & ~was_open
        events = self._open_alerts(opening, was_open, video_scores, start)
        self._open_first[opening] = t
        self._open_start[opening] = start
        self._open_sum[opening] = 0.0
        self._open_sum[active] += np.broadcast_to(normalized[:, None], active.shape)[active]
        return events

    def _open_alerts(self, opening: np.ndarray, was_open: np.ndarray, video_scores: np.ndarray,
                     start: float) -> list[ev.Event]:
        if not self.params.emit_open:
            return []
        first = opening.any(axis=1) & ~was_open.any(axis=1)
        first &= video_scores >= self.post.class_threshold
        return [ev.segment_open_event(int(c), self.class_names[c], start, float(video_scores[c]))
                for c in np.nonzero(first)[0]]

    def _close(self, c: int, j: int, last: int, end: float) -> None:
        first = int(self._open_first[c, j])
        ready_at = outer_reach(first, last, self.post.oic_lambda)[1] - 1  # the right outer window's last column
        self._pending.append(_Candidate(c, j, first, last, float(self._open_sum[c, j]),
                                        float(self._open_start[c, j]), end, ready_at))
        self._open_first[c, j] = -1

    # -- scoring and emission ---------------------------------------------------------------------------------
    def _oic_score(self, cand: _Candidate, video_scores: np.ndarray, newest: int) -> float:
        """The reference's OIC score of a candidate, its outer window clipped to the retained history and to
        column ``newest``; the inner mean is the running one (the history may not hold the whole run)."""
        oldest = max(0, self._index - self.history + 1)
        window = outer_window(cand.first, cand.last, self.post.oic_lambda, oldest, newest + 1)
        values = thresholded(self._values[window % self.history, cand.class_id],
                             self.thresholds[cand.threshold_index])
        outer = float(sequential_sum(values)) / len(values) if len(values) else 0.0
        return oic_score(cand.inner_sum / cand.length, outer, float(video_scores[cand.class_id]), self.post.gamma)

    def _emit(self, ready: list[_Candidate], video_scores: np.ndarray, now: float,
              stream_end: int | None) -> list[ev.Event]:
        newest = self._index if stream_end is None else stream_end
        keep = [cand for cand in ready if video_scores[cand.class_id] >= self.post.class_threshold]
        scored = sorted(((self._oic_score(cand, video_scores, newest), cand) for cand in keep),
                        key=lambda pair: -ranking_key(pair[0]))
        events: list[ev.Event] = []
        for score, cand in scored:
            if self._suppressed(cand):
                continue
            self._emitted[cand.class_id].append((cand.start, cand.end))
            events.append(ev.segment_event(cand.class_id, self.class_names[cand.class_id], cand.start, cand.end,
                                           score, latency=max(0.0, now - cand.end), emitted_at=time.time()))
        self._forget_old_segments()
        return events

    def _suppressed(self, cand: _Candidate) -> bool:
        """Whether a segment of the candidate's class already emitted suppresses it (offline NMS rule)."""
        emitted = self._emitted[cand.class_id]
        if not emitted:
            return False
        spans = np.asarray(emitted, np.float64)
        iou = interval_iou(cand.start, cand.end, spans[:, 0], spans[:, 1], self.post.iou_offset)
        return bool(suppresses(iou, self.post.nms_iou).any())

    def _forget_old_segments(self) -> None:
        """Drop emitted segments that end before any future candidate can start (one time unit of margin for
        the ``ecm`` convention, whose +1 makes segments up to one second apart overlap)."""
        starts = [cand.start for cand in self._pending] + list(self._open_start[self._open_first >= 0])
        horizon_start = min(starts, default=self._last_end) - 1.0
        for c, spans in enumerate(self._emitted):
            if spans and spans[0][1] < horizon_start:
                self._emitted[c] = [span for span in spans if span[1] >= horizon_start]


class OnlinePostProcessor:
    """Causal scorer + segment tracker: final CAS columns with their times in, events out."""

    def __init__(self, params: OnlineParams, class_names: Sequence[str]):
        self.params = params
        self.scorer = CausalScorer(len(class_names), params.horizon, params.topk_ratio, params.score_source)
        self.tracker = SegmentTracker(params, class_names)
        self._last_scores: np.ndarray | None = None
        self._held: list[tuple[np.ndarray, np.ndarray | None, float, float, float]] = []  # warm-up columns
        self._columns = 0  # columns of the current stream

    def push(self, cas: np.ndarray, starts: Sequence[float], ends: Sequence[float],
             nows: Sequence[float] | None = None, weights: np.ndarray | None = None) -> list[ev.Event]:
        """CAS columns ``[M, C]`` (final, in order) with each column's start/end source time and, for latencies,
        the source time at which each column became final (default: its own end); ``weights`` ``[M, C]``: their
        transition weights, needed when ``post.score_source`` is ``weights`` or ``fused``."""
        events: list[ev.Event] = []
        nows = ends if nows is None else nows
        columns = [None] * len(cas) if weights is None else weights
        for column, w, start, end, now in zip(cas, columns, starts, ends, nows, strict=True):
            self._columns += 1
            if self._columns <= self.params.warmup:
                self._held.append((column, w, float(start), float(end), float(now)))
                if self._columns == self.params.warmup:
                    events += self._release_held()
                continue
            scores, normalized = self.scorer.push(column, w)
            self._last_scores = scores
            events += self.tracker.update(normalized, scores, float(start), float(end), float(now))
        return events

    def flush(self, now: float | None = None) -> list[ev.Event]:
        """End of stream: emit what the remaining candidates give and start afresh."""
        events = self._release_held()
        events += self.tracker.flush(self._last_scores, now)
        self.scorer.reset()
        self._last_scores = None
        self._columns = 0
        return events

    def _release_held(self) -> list[ev.Event]:
        """The warm-up's columns, normalized together with the statistics of all of them, to the tracker."""
        if not self._held:
            return []
        cas = np.stack([held[0] for held in self._held])
        weights = None if self._held[0][1] is None else np.stack([held[1] for held in self._held])
        scores, normalized = self.scorer.push(cas, weights)
        self._last_scores = scores
        events: list[ev.Event] = []
        for values, (_, _, start, end, now) in zip(normalized, self._held, strict=True):
            events += self.tracker.update(values, scores, start, end, now)
        self._held = []
        return events
