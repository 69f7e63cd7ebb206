"""The causal post-processing of many streams at once on the CPU: numba kernels over the slot arrays of
``ecm_edge.kernels.causal_state`` (docs/design.md §7).

Each slot replays, column by column, what one ``ecm_edge.runtime.online.OnlinePostProcessor`` does, with the
reference's arithmetic to the bit:

- scorer: a column goes into the ring and, per class, into a sorted window (one insertion, or a replacement
  once the ring is full), which gives the top-k values (summed in float64 from the largest down) and the running
  min / max of the normalization; the softmax takes the C library's ``exp`` and sums in class order. A column
  is normalized in float32 when it came as float32 and in float64 when it came as float64, as numpy would.
- warm-up: columns are held (as float64, with a flag for their precision) until the warm-up is complete, then
  written to the rings together and normalized with the statistics of all of them.
- tracker: per class and threshold, runs open and close; a closed candidate waits in its class's pending table
  until its right outer window has arrived, is scored by OIC (outer mean summed in float64 in column order),
  ranked by ``ranking_key`` and suppressed by the segments of its class still kept; kept segments are dropped by
  the reference's rule (they end more than a second before every live candidate of the slot starts).

Slots are independent, so the kernels run over them with ``prange`` (from ``PARALLEL_MIN_SLOTS`` on); within a
slot the classes meet at every column (the softmax, and the slot-wide rule that drops old segments), so one
thread runs a slot's columns in order. Events go to each slot's own region of two record arrays
(``causal_state.RECORD_*_FIELDS``); the host orders them with ``causal_state.event_order``.

The leaf device functions (sorted windows, statistics, table updates) are ``causal_device``'s, shared with the
CUDA kernels and compiled here; the functions defined here call others, or differ from their CUDA twins in how
they split the work (a loop over classes where the GPU has a thread per class).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ecm_edge.kernels import causal_device
from ecm_edge.kernels.causal_state import (
    FORGET_MARGIN_S,
    KIND_OPEN,
    KIND_SEGMENT,
    OVERFLOW_PENDING,
    OVERFLOW_SEGMENTS,
    RECORD_FLOAT_FIELDS,
    RECORD_INT_FIELDS,
    SOURCE_FUSED,
    SOURCE_WEIGHTS,
    STATE_FIELDS,
    CausalParams,
    KernelParams,
    State,
    concatenate_records,
    host_parts,
    kernel_params,
    record_capacity,
    state_shapes,
)
from ecm_edge.kernels.detections import RANK_SCALE

# Below this many slots a call runs on the calling thread: waking the thread pool costs more than it saves.
PARALLEL_MIN_SLOTS = 4
NUM_INT_FIELDS = len(RECORD_INT_FIELDS)
NUM_FLOAT_FIELDS = len(RECORD_FLOAT_FIELDS)

# ---- the leaf device functions: ``causal_device``'s, shared with the CUDA kernels, compiled for the CPU ---------

_inlined = njit(cache=True, inline="always")  # small helpers: numba inlines them into their callers
_called = njit(cache=True)  # the table updates: called as functions
sorted_insert = _inlined(causal_device.sorted_insert)
sorted_replace = _inlined(causal_device.sorted_replace)
stats = _inlined(causal_device.stats)
stretch = _inlined(causal_device.stretch)
fuse = _inlined(causal_device.fuse)
top_k_mean = _inlined(causal_device.top_k_mean)
softmax_scores = _inlined(causal_device.softmax_scores)
outer_mean = _inlined(causal_device.outer_mean)
interval_iou = _inlined(causal_device.interval_iou)
collect_ready = _inlined(causal_device.collect_ready)
rank_ready = _inlined(causal_device.rank_ready)
write_record = _called(causal_device.store_record)  # each slot writes its records in its own region
pend_candidate = _called(causal_device.pend_candidate)
keep_segment = _called(causal_device.keep_segment)
drop_ready = _called(causal_device.drop_ready)
earliest_live = _called(causal_device.earliest_live)
forget_segments = _called(causal_device.forget_segments)
reset_counters = _called(causal_device.reset_counters)
reset_class = _called(causal_device.reset_class)


# ---- sorted windows and the scorer -----------------------------------------------------------------------------


@njit(cache=True, inline="always")
def ring_write(ring, window, s, position, before, horizon, classes, column):
    """One column (float64 holders of the input values) into a ring at ``position`` and its sorted windows, which
    held ``before`` values."""
    for c in range(classes):
        new = np.float32(column[c])
        if before < horizon:
            sorted_insert(window, s, c, before, new)
        else:
            sorted_replace(window, s, c, horizon, ring[s, position, c], new)
        ring[s, position, c] = new


@njit(cache=True)
def video_scores(st, kp, s, filled):
    """Softmax of the per-class top-k means of the CAS window (``online.top_k_means`` and ``online.softmax``)."""
    classes = st.last_scores.shape[1]
    k = max(1, int(filled * kp.topk_ratio))
    for c in range(classes):
        st.scratch_means[s, c] = top_k_mean(st.sorted, s, c, filled, k)
    softmax_scores(st, s, classes)
    st.has_scores[s] = 1


@njit(cache=True)
def score_columns(st, kp, s, count, wide_c, wide_w):
    """``CausalScorer.push`` of the ``count`` columns in ``held[s]`` (and ``held_w[s]``): into the rings, video
    scores into ``last_scores``, and the normalized score columns in place of ``held[s]``. Returns whether those
    values are float64 (else float32 held in float64)."""
    h, classes = kp.horizon, st.ring.shape[2]
    seen = st.seen[s]
    for i in range(count):
        before = min(seen + i, h)
        position = (seen + i) % h
        ring_write(st.ring, st.sorted, s, position, before, h, classes, st.held[s, i])
        if kp.source != 0:
            ring_write(st.ring_w, st.sorted_w, s, position, before, h, classes, st.held_w[s, i])
    st.seen[s] = seen + count
    filled = min(seen + count, h)
    video_scores(st, kp, s, filled)
    for c in range(classes):
        low, delta = stats(st.sorted, s, c, filled)
        for i in range(count):
            st.held[s, i, c] = stretch(st.held[s, i, c], low, delta, wide_c)
        if kp.source != 0:
            low, delta = stats(st.sorted_w, s, c, filled)
            for i in range(count):
                st.held_w[s, i, c] = stretch(st.held_w[s, i, c], low, delta, wide_w)
    if kp.source == SOURCE_WEIGHTS:
        for i in range(count):
            for c in range(classes):
                st.held[s, i, c] = st.held_w[s, i, c]
        return wide_w
    if kp.source == SOURCE_FUSED:
        wide = wide_c or wide_w
        for i in range(count):
            for c in range(classes):
                st.held[s, i, c] = fuse(st.held[s, i, c], st.held_w[s, i, c], wide)
            ring_write(st.ring_f, st.sorted_f, s, (seen + i) % h, min(seen + i, h), h, classes, st.held[s, i])
        for c in range(classes):
            low, delta = stats(st.sorted_f, s, c, filled)
            for i in range(count):
                st.held[s, i, c] = stretch(st.held[s, i, c], low, delta, wide)
        return wide
    return wide_c


# ---- the tracker ------------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def outer_reach(first, last, oic_lambda):
    """``reference.outer_reach``: ``int(s − λ·len)`` and ``int(e + λ·len)`` (truncated toward zero)."""
    reach = oic_lambda * (last - first + 1)
    return int(first - reach), int(last + reach)


@njit(cache=True)
def close_candidate(st, kp, s, c, j, last, end, step):
    """Move the open candidate (c, j) to the class's pending table (``SegmentTracker._close``)."""
    ready = outer_reach(st.open_first[s, c, j], last, kp.oic_lambda)[1] - 1
    if not pend_candidate(st, s, c, j, last, end, step, ready):
        st.overflow[s, OVERFLOW_PENDING] += 1


@njit(cache=True)
def track_runs(st, kp, s, i, t, start, rec_i, rec_f, at):
    """``SegmentTracker._track_runs`` for normalized column ``held[s, i]`` at index t; returns the next record."""
    classes, thresholds = st.ring.shape[2], kp.thresholds
    for c in range(classes):
        value = st.held[s, i, c]
        open_before, opening = False, False
        for j in range(thresholds.shape[0]):
            active = value >= thresholds[j] and value > 0
            was_open = st.open_first[s, c, j] >= 0
            open_before |= was_open
            if was_open and not active:
                close_candidate(st, kp, s, c, j, t - 1, st.last_end[s], t)
            if active and not was_open:
                opening = True
                st.open_first[s, c, j] = t
                st.open_start[s, c, j] = start
                st.open_sum[s, c, j] = 0.0
            if active:
                st.open_sum[s, c, j] += value
        score = st.last_scores[s, c]
        if kp.emit_open and opening and not open_before and score >= kp.class_threshold:
            write_record(rec_i, rec_f, at, s, KIND_OPEN, c, 0, t, 0, 0.0, start, 0.0, score, 0.0)
            at += 1
    return at


@njit(cache=True)
def oic_score(st, kp, s, c, p, newest):
    """``SegmentTracker._oic_score`` of pending candidate p of class c, the outer window clipped to the history
    and to column ``newest``."""
    h = kp.horizon
    first, last = st.pend_first[s, c, p], st.pend_last[s, c, p]
    theta = kp.thresholds[st.pend_threshold[s, c, p]]
    left, right = outer_reach(first, last, kp.oic_lambda)
    oldest = max(0, st.tracker_index[s] - h + 1)
    outer = outer_mean(st.values, s, c, h, theta, max(oldest, left), first, last, min(newest + 1, right))
    inner = st.pend_sum[s, c, p] / (last - first + 1)
    return inner - outer + kp.gamma * st.last_scores[s, c]


@njit(cache=True)
def suppressed(st, kp, s, c, start, end):
    """Whether a kept segment of class c suppresses ``[start, end]`` (``SegmentTracker._suppressed``)."""
    for e in range(st.emit_count[s, c]):
        if interval_iou(start, end, st.emit_start[s, c, e], st.emit_end[s, c, e], kp.iou_offset) >= kp.nms_iou:
            return True
    return False


@njit(cache=True)
def emit_class(st, kp, s, c, t, newest, everything, step, now, rec_i, rec_f, at):
    """``SegmentTracker._emit`` for class c: its ready candidates (all when ``everything``) leave the pending
    table; those of a class whose video score passes are scored, ranked and suppressed. Returns the next record."""
    order, keys, scores = st.scratch_order[s, c], st.scratch_key[s, c], st.scratch_score[s, c]
    ready = collect_ready(st, s, c, t, everything)
    if ready == 0:
        return at
    if st.last_scores[s, c] >= kp.class_threshold:
        for r in range(ready):
            scores[r] = oic_score(st, kp, s, c, order[r], newest)
            keys[r] = math.floor(scores[r] * RANK_SCALE + 0.5)
        rank_ready(st, s, c, ready)
        for r in range(ready):
            p = order[r]
            start, end = st.pend_start[s, c, p], st.pend_end[s, c, p]
            if suppressed(st, kp, s, c, start, end):
                continue
            if keep_segment(st, s, c, start, end):
                st.overflow[s, OVERFLOW_SEGMENTS] += 1
            write_record(rec_i, rec_f, at, s, KIND_SEGMENT, c, st.pend_threshold[s, c, p], step,
                         st.pend_closed[s, c, p], keys[r], start, end, scores[r], now)
            at += 1
    drop_ready(st, s, c, t, everything)
    return at


@njit(cache=True)
def forget_old_segments(st, s):
    """``SegmentTracker._forget_old_segments``: with every class's pending and open candidates of the slot."""
    classes = st.emit_count.shape[1]
    horizon_start = math.inf
    for c in range(classes):
        horizon_start = min(horizon_start, earliest_live(st, s, c))
    if horizon_start == math.inf:
        horizon_start = st.last_end[s]
    horizon_start -= FORGET_MARGIN_S
    for c in range(classes):
        forget_segments(st, s, c, horizon_start)


@njit(cache=True)
def any_ready(st, s, t):
    for c in range(st.pend_count.shape[1]):
        for p in range(st.pend_count[s, c]):
            if st.pend_ready[s, c, p] <= t:
                return True
    return False


@njit(cache=True)
def emit_ready(st, kp, s, t, newest, everything, now, rec_i, rec_f, at):
    """Every class's ``emit_class`` at step t, then the slot's old segments forgotten."""
    for c in range(st.pend_count.shape[1]):
        at = emit_class(st, kp, s, c, t, newest, everything, t, now, rec_i, rec_f, at)
    forget_old_segments(st, s)
    return at


@njit(cache=True)
def update_tracker(st, kp, s, i, rec_i, rec_f, at):
    """``SegmentTracker.update`` with normalized column ``held[s, i]`` and its times ``held_times[s, i]``."""
    t = st.tracker_index[s] + 1
    st.tracker_index[s] = t
    h, classes = kp.horizon, st.ring.shape[2]
    for c in range(classes):
        st.values[s, t % h, c] = np.float32(st.held[s, i, c])
    start, end, now = st.held_times[s, i, 0], st.held_times[s, i, 1], st.held_times[s, i, 2]
    at = track_runs(st, kp, s, i, t, start, rec_i, rec_f, at)
    st.last_end[s] = end
    if t + 1 < kp.warmup or not any_ready(st, s, t):
        return at
    return emit_ready(st, kp, s, t, t, False, now, rec_i, rec_f, at)


@njit(cache=True)
def advance(st, kp, s, count, wide_c, wide_w, rec_i, rec_f, at):
    """Score the ``count`` columns in ``held[s]`` together and feed them to the tracker in order."""
    score_columns(st, kp, s, count, wide_c, wide_w)
    for i in range(count):
        at = update_tracker(st, kp, s, i, rec_i, rec_f, at)
    return at


# ---- per slot: push and flush ----------------------------------------------------------------------------------


@njit(cache=True)
def push_slot(st, kp, s, cas, wide_c, weights, wide_w, times, first, stop, rec_i, rec_f, at):
    """``OnlinePostProcessor.push`` of columns ``first .. stop − 1`` for slot s; returns the next record."""
    classes = cas.shape[1]
    for col in range(first, stop):
        st.columns[s] += 1
        held = st.columns[s] - 1 if st.columns[s] <= kp.warmup else 0
        for c in range(classes):
            st.held[s, held, c] = np.float64(cas[col, c])
            if kp.source != 0:
                st.held_w[s, held, c] = np.float64(weights[col, c])
        for k in range(3):
            st.held_times[s, held, k] = times[col, k]
        if st.columns[s] > kp.warmup:
            at = advance(st, kp, s, 1, wide_c, wide_w, rec_i, rec_f, at)
            continue
        st.held_wide[s, 0] |= wide_c
        st.held_wide[s, 1] |= wide_w
        if st.columns[s] == kp.warmup:
            at = advance(st, kp, s, kp.warmup, st.held_wide[s, 0] != 0, st.held_wide[s, 1] != 0, rec_i, rec_f, at)
            st.held_wide[s, 0], st.held_wide[s, 1] = 0, 0
    return at


@njit(cache=True)
def flush_slot(st, kp, s, now, rec_i, rec_f, at):
    """``OnlinePostProcessor.flush`` for slot s (``now`` NaN: the last column's end); the slot starts afresh."""
    held = st.columns[s] if st.columns[s] < kp.warmup else 0
    if held > 0:
        at = advance(st, kp, s, held, st.held_wide[s, 0] != 0, st.held_wide[s, 1] != 0, rec_i, rec_f, at)
    t = st.tracker_index[s]
    if t >= 0 and st.has_scores[s] != 0:
        for c in range(st.open_first.shape[1]):
            for j in range(st.open_first.shape[2]):
                if st.open_first[s, c, j] >= 0:
                    close_candidate(st, kp, s, c, j, t, st.last_end[s], t + 1)
        when = st.last_end[s] if math.isnan(now) else now
        for c in range(st.pend_count.shape[1]):
            at = emit_class(st, kp, s, c, t, t, True, t + 1, when, rec_i, rec_f, at)
    reset_slot(st, s)
    return at


@njit(cache=True)
def reset_slot(st, s):
    """A fresh stream in slot s (``causal_state.CLEARED_ON_RESET``)."""
    reset_counters(st, s)
    for c in range(st.open_first.shape[1]):
        reset_class(st, s, c)


# ---- the calls: slots in parallel or serially -------------------------------------------------------------------


@njit(cache=True, parallel=True)
def push_parallel(st, kp, slots, offsets, cas, wide_c, weights, wide_w, times, rec_offsets, rec_i, rec_f, counts):
    for n in prange(slots.shape[0]):
        counts[n] = push_slot(st, kp, slots[n], cas, wide_c, weights, wide_w, times, offsets[n], offsets[n + 1],
                              rec_i, rec_f, rec_offsets[n]) - rec_offsets[n]


@njit(cache=True)
def push_serial(st, kp, slots, offsets, cas, wide_c, weights, wide_w, times, rec_offsets, rec_i, rec_f, counts):
    for n in range(slots.shape[0]):
        counts[n] = push_slot(st, kp, slots[n], cas, wide_c, weights, wide_w, times, offsets[n], offsets[n + 1],
                              rec_i, rec_f, rec_offsets[n]) - rec_offsets[n]


@njit(cache=True, parallel=True)
def flush_parallel(st, kp, slots, nows, rec_offsets, rec_i, rec_f, counts):
    for n in prange(slots.shape[0]):
        counts[n] = flush_slot(st, kp, slots[n], nows[n], rec_i, rec_f, rec_offsets[n]) - rec_offsets[n]


@njit(cache=True)
def flush_serial(st, kp, slots, nows, rec_offsets, rec_i, rec_f, counts):
    for n in range(slots.shape[0]):
        counts[n] = flush_slot(st, kp, slots[n], nows[n], rec_i, rec_f, rec_offsets[n]) - rec_offsets[n]


# ---- host side ---------------------------------------------------------------------------------------------------


class CpuSlots:
    """The host side of the CPU kernels: state arrays, capacity, inputs packed per call, records back."""

    def __init__(self, params: CausalParams):
        self.params = params
        self.kp = kernel_params(params)
        self.state = allocate(state_shapes(params, 0))

    @property
    def capacity(self) -> int:
        return self.state.columns.shape[0]

    def grow(self, capacity: int) -> None:
        self.state = grow(self.state, state_shapes(self.params, capacity))

    def reset(self, slot: int) -> None:
        reset_slot(self.state, slot)

    def overflows(self, slot: int) -> tuple[int, int]:
        return int(self.state.overflow[slot, 0]), int(self.state.overflow[slot, 1])

    def push(self, slots: np.ndarray, counts: np.ndarray, cas: list, weights: list | None, times: np.ndarray,
             stream: object = None, whole_cas: object = None, whole_weights: object = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """Records of ``slots`` advanced by their columns (per-slot arrays; host or device memory, copied here;
        ``stream`` and the whole arrays matter to the CUDA kernels only)."""
        parts = []
        for part in host_parts(slots, counts, cas, weights, times):
            part_slots, part_counts = slots[part.group], counts[part.group]
            w_part = np.zeros((0, part.cas.shape[1]), np.float32) if part.weights is None else part.weights
            part_offsets = np.concatenate([[0], np.cumsum(part_counts)]).astype(np.int64)
            regions = self._regions(part_slots, part_counts)
            rec_i, rec_f, written = causal_push(self.state, self.kp, part_slots, part_offsets,
                                                np.ascontiguousarray(part.cas), np.ascontiguousarray(w_part),
                                                np.ascontiguousarray(part.times), regions)
            parts.append(compact_records(rec_i, rec_f, regions, written))
        return concatenate_records(parts)

    def flush(self, slots: np.ndarray, nows: np.ndarray, stream: object = None) -> tuple[np.ndarray, np.ndarray]:
        regions = self._regions(slots, np.zeros(slots.size, np.int64))
        rec_i, rec_f, written = causal_flush(self.state, self.kp, slots, nows, regions)
        return compact_records(rec_i, rec_f, regions, written)

    def _regions(self, slots: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Record offsets per slot: ``causal_state.record_capacity`` of its updates and pending candidates."""
        columns = self.state.columns[slots]
        updates = counts + np.where(columns < self.params.warmup, columns, 0)
        pending = self.state.pend_count[slots].sum(axis=1)
        return np.concatenate([[0], np.cumsum(record_capacity(self.params, updates, pending))]).astype(np.int64)


def compact_records(rec_i: np.ndarray, rec_f: np.ndarray, regions: np.ndarray,
                    written: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The written part of every slot's record region, back to back."""
    sizes = np.diff(regions)
    rank = np.arange(int(regions[-1])) - np.repeat(regions[:-1], sizes)
    used = rank < np.repeat(written, sizes)
    return rec_i[used], rec_f[used]




def allocate(shapes: dict[str, tuple[tuple[int, ...], type]]) -> State:
    """Host state arrays (untouched memory costs nothing until a slot uses it)."""
    return State(**{name: np.empty(shape, dtype) for name, (shape, dtype) in shapes.items()})


def grow(state: State, shapes: dict[str, tuple[tuple[int, ...], type]]) -> State:
    """State with more slots: the old slots' arrays copied over."""
    bigger = allocate(shapes)
    for name in STATE_FIELDS:
        old = getattr(state, name)
        getattr(bigger, name)[: old.shape[0]] = old
    bigger.overflow[state.overflow.shape[0]:] = 0
    return bigger


def causal_push(state: State, kp: KernelParams, slots: np.ndarray, offsets: np.ndarray, cas: np.ndarray,
                weights: np.ndarray, times: np.ndarray, rec_offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Advance ``slots`` by their columns ``cas[offsets[n]:offsets[n + 1]]`` (float32 or float64 ``[N, C]``;
    ``weights`` likewise, or ``[0, C]`` for the ``cas`` source; ``times [N, 3]``: start, end, now). Returns the
    records (ints, floats) and how many each slot wrote at its ``rec_offsets`` region."""
    rec_i = np.empty((int(rec_offsets[-1]), NUM_INT_FIELDS), np.int64)
    rec_f = np.empty((int(rec_offsets[-1]), NUM_FLOAT_FIELDS), np.float64)
    counts = np.zeros(slots.size, np.int64)
    run = push_parallel if slots.size >= PARALLEL_MIN_SLOTS else push_serial
    run(state, kp, slots, offsets, cas, cas.dtype == np.float64, weights, weights.dtype == np.float64, times,
        rec_offsets, rec_i, rec_f, counts)
    return rec_i, rec_f, counts


def causal_flush(state: State, kp: KernelParams, slots: np.ndarray, nows: np.ndarray,
                 rec_offsets: np.ndarray) -> tuple[np.ndarray, ...]:
    """End the streams in ``slots`` (``nows``: NaN for the last column's end); records as :func:`causal_push`."""
    rec_i = np.empty((int(rec_offsets[-1]), NUM_INT_FIELDS), np.int64)
    rec_f = np.empty((int(rec_offsets[-1]), NUM_FLOAT_FIELDS), np.float64)
    counts = np.zeros(slots.size, np.int64)
    run = flush_parallel if slots.size >= PARALLEL_MIN_SLOTS else flush_serial
    run(state, kp, slots, nows, rec_offsets, rec_i, rec_f, counts)
    return rec_i, rec_f, counts


__all__ = ["PARALLEL_MIN_SLOTS", "CpuSlots", "KernelParams", "State", "allocate", "causal_flush", "causal_push",
           "compact_records", "grow",
           "kernel_params", "reset_slot"]
