"""The device functions that the CPU and CUDA causal kernels share, written once (docs/design.md §7).

Plain Python functions over the slot arrays of ``ecm_edge.kernels.causal_state``, compiled by both backends where
they are used: ``njit(cache=True)(fn)`` in ``causal_cpu`` (with ``inline="always"`` for the small ones), and
``cuda.jit(device=True, inline="always")(fn)`` in ``causal_cuda_kernels.build_kernels``. So every function here
must be a *leaf* (tests/kernels/test_causal_kernels.py checks it): it may call numpy scalar types,
``math`` and builtins, but no other function of this module or any jitted helper by its global name (such a name
would resolve to the plain Python function, which neither backend can call). What needs a helper takes its
result as an argument (``pend_candidate`` takes the ready index that ``outer_reach`` gives), and what the two
backends do differently stays with the caller: a full table is reported by the return value, and the caller
counts it (``+= 1`` on the CPU, an atomic add on the GPU, where the block's threads share the slot's counter).

Each function touches one (slot, class) of the state, so the CUDA kernels can run it per class on the block's
threads and the CPU kernels per class in a loop. Products that meet a sum do not belong here: the GPU would fuse
them into a multiply-add unless written with ``dmul_rn`` (``causal_cuda_kernels``), the CPU never does, so those
functions (``outer_reach``, ``oic_score``) are written per backend.
"""

from __future__ import annotations

import math

import numpy as np

from ecm_edge.kernels.causal_state import (
    R_CLASS,
    R_CLOSED,
    R_END,
    R_KEY,
    R_KIND,
    R_NOW,
    R_SCORE,
    R_SLOT,
    R_START,
    R_STEP,
    R_THRESHOLD,
)

# ---- sorted windows and the scorer -----------------------------------------------------------------------------


def sorted_insert(window, s, c, n, value):
    """``window[s, c, :n]`` ascending; insert ``value`` so that ``window[s, c, :n + 1]`` is."""
    i = n
    while i > 0 and window[s, c, i - 1] > value:
        window[s, c, i] = window[s, c, i - 1]
        i -= 1
    window[s, c, i] = value


def sorted_replace(window, s, c, n, old, new):
    """``window[s, c, :n]`` ascending and holding ``old``; replace one ``old`` by ``new``, keeping the order."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if window[s, c, mid] < old:
            lo = mid + 1
        else:
            hi = mid
    i = lo
    if new >= old:
        while i + 1 < n and window[s, c, i + 1] < new:
            window[s, c, i] = window[s, c, i + 1]
            i += 1
    else:
        while i > 0 and window[s, c, i - 1] > new:
            window[s, c, i] = window[s, c, i - 1]
            i -= 1
    window[s, c, i] = new


def stats(window, s, c, filled):
    """Step 1's statistics of a sorted window: (relu(min), divisor), the divisor 1 when ≤ 0, in float32."""
    zero = np.float32(0.0)
    lo, hi = window[s, c, 0], window[s, c, filled - 1]
    low = lo if lo >= zero else zero
    high = hi if hi >= zero else zero
    delta = high - low
    if delta <= zero:
        delta = np.float32(1.0)
    return low, delta


def stretch(x, low, delta, wide):
    """``(x − low) / delta`` in float64 for a float64 input, else in float32 (returned as float64)."""
    if wide:
        return (x - np.float64(low)) / np.float64(delta)
    return np.float64((np.float32(x) - low) / delta)


def fuse(a, b, wide):
    """The fused score: the mean of the two normalized values, in the precision numpy would use."""
    if wide:
        return 0.5 * (a + b)
    return np.float64(np.float32(0.5) * (np.float32(a) + np.float32(b)))


def top_k_mean(window, s, c, filled, k):
    """The mean of the k largest of ``window[s, c, :filled]`` (ascending), summed in float64 from the largest
    down (``online.top_k_means``)."""
    total = 0.0
    for i in range(filled - 1, filled - 1 - k, -1):
        total += np.float64(window[s, c, i])
    return total / k


def softmax_scores(st, s, classes):
    """``last_scores[s]``: the softmax of the per-class means in ``scratch_means[s]`` (which it overwrites),
    with the C library's ``exp`` and the sum in class order (``online.softmax``)."""
    high = st.scratch_means[s, 0]
    for c in range(1, classes):
        high = max(high, st.scratch_means[s, c])
    total = 0.0
    for c in range(classes):
        st.scratch_means[s, c] = math.exp(st.scratch_means[s, c] - high)
        total += st.scratch_means[s, c]
    for c in range(classes):
        st.last_scores[s, c] = st.scratch_means[s, c] / total


# ---- the tracker ------------------------------------------------------------------------------------------------


def store_record(rec_i, rec_f, at, s, kind, c, j, step, closed, key, start, end, score, now):
    """One event as row ``at`` of the record arrays (``causal_state.RECORD_*_FIELDS``)."""
    rec_i[at, R_SLOT], rec_i[at, R_KIND], rec_i[at, R_CLASS] = s, kind, c
    rec_i[at, R_THRESHOLD], rec_i[at, R_STEP], rec_i[at, R_CLOSED] = j, step, closed
    rec_f[at, R_KEY], rec_f[at, R_START], rec_f[at, R_END] = key, start, end
    rec_f[at, R_SCORE], rec_f[at, R_NOW] = score, now


def pend_candidate(st, s, c, j, last, end, step, ready):
    """Move the open candidate (c, j), whose last column is ``last``, to the class's pending table, ready at
    column ``ready`` (``SegmentTracker._close``). Returns False when the table is full (the candidate is lost
    and the caller counts it in ``overflow[s, OVERFLOW_PENDING]``)."""
    first = st.open_first[s, c, j]
    st.open_first[s, c, j] = -1
    n = st.pend_count[s, c]
    if n == st.pend_first.shape[2]:
        return False
    st.pend_first[s, c, n] = first
    st.pend_last[s, c, n] = last
    st.pend_ready[s, c, n] = ready
    st.pend_closed[s, c, n] = step
    st.pend_threshold[s, c, n] = j
    st.pend_sum[s, c, n] = st.open_sum[s, c, j]
    st.pend_start[s, c, n] = st.open_start[s, c, j]
    st.pend_end[s, c, n] = end
    st.pend_count[s, c] = n + 1
    return True


def outer_mean(values, s, c, h, theta, low, first, last, high):
    """OIC's outer mean for class c: the mean of the normalized columns ``low .. first − 1`` and ``last + 1 ..
    high − 1`` of the ring ``values[s, :, c]`` (h columns), those below ``theta`` counted as 0, summed in float64
    in column order; 0 when there are none (``SegmentTracker._oic_score``)."""
    total, count = 0.0, 0
    for position in range(low, first):
        value = values[s, position % h, c]
        total += np.float64(value) if value >= theta else 0.0
        count += 1
    for position in range(last + 1, high):
        value = values[s, position % h, c]
        total += np.float64(value) if value >= theta else 0.0
        count += 1
    return total / count if count > 0 else 0.0


def interval_iou(start, end, other_start, other_end, offset):
    """IoU of two intervals (``reference.interval_iou`` for one pair); ``offset`` = ``PostParams.iou_offset``."""
    inter = max(0.0, min(end, other_end) - max(start, other_start) + offset)
    union = (end - start + offset) + (other_end - other_start + offset) - inter
    return inter / union


def keep_segment(st, s, c, start, end):
    """Remember an emitted segment of class c for NMS. A full table drops its oldest segment first and returns
    True (the caller counts it in ``overflow[s, OVERFLOW_SEGMENTS]``), else False."""
    n = st.emit_count[s, c]
    full = n == st.emit_start.shape[2]
    if full:
        for e in range(1, n):
            st.emit_start[s, c, e - 1] = st.emit_start[s, c, e]
            st.emit_end[s, c, e - 1] = st.emit_end[s, c, e]
        n -= 1
    st.emit_start[s, c, n] = start
    st.emit_end[s, c, n] = end
    st.emit_count[s, c] = n + 1
    return full


def collect_ready(st, s, c, t, everything):
    """Class c's pending candidates that are ready at column t (all when ``everything``): their table indices
    into ``scratch_order[s, c]``, in table order. Returns how many."""
    ready = 0
    for p in range(st.pend_count[s, c]):
        if everything or st.pend_ready[s, c, p] <= t:
            st.scratch_order[s, c, ready] = p
            ready += 1
    return ready


def rank_ready(st, s, c, n):
    """Stable insertion sort of class c's first n ready candidates (``scratch_order``, with their
    ``scratch_key`` and ``scratch_score``) by ranking key, highest first: their table order, which is the order
    they closed in, breaks ties."""
    order, keys, scores = st.scratch_order, st.scratch_key, st.scratch_score
    for a in range(1, n):
        p, key, score = order[s, c, a], keys[s, c, a], scores[s, c, a]
        b = a
        while b > 0 and keys[s, c, b - 1] < key:
            order[s, c, b] = order[s, c, b - 1]
            keys[s, c, b] = keys[s, c, b - 1]
            scores[s, c, b] = scores[s, c, b - 1]
            b -= 1
        order[s, c, b], keys[s, c, b], scores[s, c, b] = p, key, score


def drop_ready(st, s, c, t, everything):
    """Remove the ready candidates (all when ``everything``) from class c's pending table, keeping the others
    in order."""
    kept = 0
    for p in range(st.pend_count[s, c]):
        if everything or st.pend_ready[s, c, p] <= t:
            continue
        st.pend_first[s, c, kept] = st.pend_first[s, c, p]
        st.pend_last[s, c, kept] = st.pend_last[s, c, p]
        st.pend_ready[s, c, kept] = st.pend_ready[s, c, p]
        st.pend_closed[s, c, kept] = st.pend_closed[s, c, p]
        st.pend_threshold[s, c, kept] = st.pend_threshold[s, c, p]
        st.pend_sum[s, c, kept] = st.pend_sum[s, c, p]
        st.pend_start[s, c, kept] = st.pend_start[s, c, p]
        st.pend_end[s, c, kept] = st.pend_end[s, c, p]
        kept += 1
    st.pend_count[s, c] = kept


def earliest_live(st, s, c):
    """The earliest start of class c's pending and open candidates (``inf`` when it has none)."""
    earliest = math.inf
    for p in range(st.pend_count[s, c]):
        earliest = min(earliest, st.pend_start[s, c, p])
    for j in range(st.open_first.shape[2]):
        if st.open_first[s, c, j] >= 0:
            earliest = min(earliest, st.open_start[s, c, j])
    return earliest


def forget_segments(st, s, c, horizon_start):
    """Drop class c's kept segments that end before ``horizon_start``, keeping the others in order."""
    n = st.emit_count[s, c]
    if n == 0 or st.emit_end[s, c, 0] >= horizon_start:
        return
    kept = 0
    for e in range(n):
        if st.emit_end[s, c, e] >= horizon_start:
            st.emit_start[s, c, kept] = st.emit_start[s, c, e]
            st.emit_end[s, c, kept] = st.emit_end[s, c, e]
            kept += 1
    st.emit_count[s, c] = kept


# ---- a fresh stream ---------------------------------------------------------------------------------------------


def reset_counters(st, s):
    """The per-slot counters of a fresh stream in slot s (``causal_state.CLEARED_ON_RESET``)."""
    st.columns[s], st.seen[s], st.tracker_index[s], st.last_end[s], st.has_scores[s] = 0, 0, -1, 0.0, 0
    st.held_wide[s, 0], st.held_wide[s, 1] = 0, 0


def reset_class(st, s, c):
    """Class c of a fresh stream in slot s: no open, pending or kept candidates (``CLEARED_ON_RESET``)."""
    for j in range(st.open_first.shape[2]):
        st.open_first[s, c, j] = -1
    st.pend_count[s, c] = 0
    st.emit_count[s, c] = 0
