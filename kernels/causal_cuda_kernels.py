"""The CUDA kernels of the causal post-processing (see ``ecm_edge.kernels.causal_cuda`` for the launches).

Imported only when the CUDA kernels run: it imports ``numba.cuda``. One block per stream slot, its threads over
the classes (thread ``tid`` takes classes ``tid, tid + threads, ...``). Per column the classes meet twice: the
softmax (thread 0 sums the exponentials in class order, as the reference) and the slot-wide rule that forgets
old segments (each thread reads every class's earliest live candidate). Per-slot counters are kept by every
thread alike and written back by thread 0 at the end. The arithmetic is ``causal_cpu``'s, with products that
meet a sum rounded on their own (``dmul_rn``: no fused multiply-add).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ecm_edge.environment import cuda_simulator_enabled
from ecm_edge.kernels.causal_state import (
    FORGET_MARGIN_S,
    KIND_OPEN,
    KIND_SEGMENT,
    OVERFLOW_PENDING,
    OVERFLOW_SEGMENTS,
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
    SOURCE_FUSED,
    SOURCE_WEIGHTS,
)
from ecm_edge.kernels.detections import RANK_SCALE

SUMMARY_FIELDS = 4  # per launched slot: columns, pending candidates, pending overflows, segment overflows


def build_kernels(threads: int) -> SimpleNamespace:
    """Every kernel for blocks of ``threads`` threads."""
    if cuda_simulator_enabled():
        @cuda.jit(device=True, inline="always")
        def mul(a, b):
            return a * b
    else:
        from numba.cuda import libdevice

        mul = libdevice.dmul_rn  # a product never contracted with a sum into an FMA

    @cuda.jit(device=True, inline="always")
    def sorted_insert(st_sorted, s, c, n, value):
        i = n
        while i > 0 and st_sorted[s, c, i - 1] > value:
            st_sorted[s, c, i] = st_sorted[s, c, i - 1]
            i -= 1
        st_sorted[s, c, i] = value

    @cuda.jit(device=True, inline="always")
    def sorted_replace(st_sorted, s, c, n, old, new):
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if st_sorted[s, c, mid] < old:
                lo = mid + 1
            else:
                hi = mid
        i = lo
        if new >= old:
            while i + 1 < n and st_sorted[s, c, i + 1] < new:
                st_sorted[s, c, i] = st_sorted[s, c, i + 1]
                i += 1
        else:
            while i > 0 and st_sorted[s, c, i - 1] > new:
                st_sorted[s, c, i] = st_sorted[s, c, i - 1]
                i -= 1
        st_sorted[s, c, i] = new

    @cuda.jit(device=True, inline="always")
    def ring_write(ring, window, s, c, position, before, horizon, value):
        new = np.float32(value)
        if before < horizon:
            sorted_insert(window, s, c, before, new)
        else:
            sorted_replace(window, s, c, horizon, ring[s, position, c], new)
        ring[s, position, c] = new

    @cuda.jit(device=True, inline="always")
    def stats(window, s, c, filled):
        zero = np.float32(0.0)
        lo, hi = window[s, c, 0], window[s, c, filled - 1]
        low = lo if lo >= zero else zero
        high = hi if hi >= zero else zero
        delta = high - low
        if delta <= zero:
            delta = np.float32(1.0)
        return low, delta

    @cuda.jit(device=True, inline="always")
    def stretch(x, low, delta, wide):
        if wide:
            return (x - np.float64(low)) / np.float64(delta)
        return np.float64((np.float32(x) - low) / delta)

    @cuda.jit(device=True, inline="always")
    def fuse(a, b, wide):
        if wide:
            return 0.5 * (a + b)
        return np.float64(np.float32(0.5) * (np.float32(a) + np.float32(b)))

    @cuda.jit(device=True, inline="always")
    def outer_reach(first, last, oic_lambda):
        reach = mul(oic_lambda, np.float64(last - first + 1))
        return int(first - reach), int(last + reach)

    @cuda.jit(device=True, inline="always")
    def score_columns(st, kp, s, count, seen, wide_c, wide_w):
        """``causal_cpu.score_columns``, the classes over the block's threads; returns the values' width."""
        tid = cuda.threadIdx.x
        h, classes = kp.horizon, st.ring.shape[2]
        filled = min(seen + count, h)
        k = max(1, int(filled * kp.topk_ratio))
        for c in range(tid, classes, threads):
            for i in range(count):
                before, position = min(seen + i, h), (seen + i) % h
                ring_write(st.ring, st.sorted, s, c, position, before, h, st.held[s, i, c])
                if kp.source != 0:
                    ring_write(st.ring_w, st.sorted_w, s, c, position, before, h, st.held_w[s, i, c])
            total = 0.0
            for i in range(filled - 1, filled - 1 - k, -1):
                total += np.float64(st.sorted[s, c, i])
            st.scratch_means[s, c] = total / k
        cuda.syncthreads()
        if tid == 0:
            high = st.scratch_means[s, 0]
            for c in range(1, classes):
                high = max(high, st.scratch_means[s, c])
            total = 0.0
            for c in range(classes):
                st.scratch_means[s, c] = math.exp(st.scratch_means[s, c] - high)
                total += st.scratch_means[s, c]
            for c in range(classes):
                st.last_scores[s, c] = st.scratch_means[s, c] / total
        wide = wide_c
        if kp.source == SOURCE_WEIGHTS:
            wide = wide_w
        elif kp.source == SOURCE_FUSED:
            wide = wide_c or wide_w
        for c in range(tid, classes, threads):
            low, delta = stats(st.sorted, s, c, filled)
            for i in range(count):
                st.held[s, i, c] = stretch(st.held[s, i, c], low, delta, wide_c)
            if kp.source != 0:
                low, delta = stats(st.sorted_w, s, c, filled)
                for i in range(count):
                    st.held_w[s, i, c] = stretch(st.held_w[s, i, c], low, delta, wide_w)
            if kp.source == SOURCE_WEIGHTS:
                for i in range(count):
                    st.held[s, i, c] = st.held_w[s, i, c]
            if kp.source == SOURCE_FUSED:
                for i in range(count):
                    st.held[s, i, c] = fuse(st.held[s, i, c], st.held_w[s, i, c], wide)
                    ring_write(st.ring_f, st.sorted_f, s, c, (seen + i) % h, min(seen + i, h), h, st.held[s, i, c])
                low, delta = stats(st.sorted_f, s, c, filled)
                for i in range(count):
                    st.held[s, i, c] = stretch(st.held[s, i, c], low, delta, wide)
        cuda.syncthreads()

    @cuda.jit(device=True, inline="always")
    def write_record(rec_i, rec_f, cursor, s, kind, c, j, step, closed, key, start, end, score, now):
        at = cuda.atomic.add(cursor, 0, 1)
        if at >= rec_i.shape[0]:
            return
        rec_i[at, R_SLOT], rec_i[at, R_KIND], rec_i[at, R_CLASS] = s, kind, c
        rec_i[at, R_THRESHOLD], rec_i[at, R_STEP], rec_i[at, R_CLOSED] = j, step, closed
        rec_f[at, R_KEY], rec_f[at, R_START], rec_f[at, R_END] = key, start, end
        rec_f[at, R_SCORE], rec_f[at, R_NOW] = score, now

    @cuda.jit(device=True, inline="always")
    def close_candidate(st, kp, s, c, j, last, end, step):
        first = st.open_first[s, c, j]
        st.open_first[s, c, j] = -1
        n = st.pend_count[s, c]
        if n == st.pend_first.shape[2]:
            cuda.atomic.add(st.overflow, (s, OVERFLOW_PENDING), 1)
            return
        st.pend_first[s, c, n] = first
        st.pend_last[s, c, n] = last
        st.pend_ready[s, c, n] = outer_reach(first, last, kp.oic_lambda)[1] - 1
        st.pend_closed[s, c, n] = step
        st.pend_threshold[s, c, n] = j
        st.pend_sum[s, c, n] = st.open_sum[s, c, j]
        st.pend_start[s, c, n] = st.open_start[s, c, j]
        st.pend_end[s, c, n] = end
        st.pend_count[s, c] = n + 1

    @cuda.jit(device=True, inline="always")
    def track_class(st, kp, s, c, i, t, start, last_end, rec_i, rec_f, cursor):
        value = st.held[s, i, c]
        open_before, opening = False, False
        for j in range(kp.thresholds.shape[0]):
            active = value >= kp.thresholds[j] and value > 0
            was_open = st.open_first[s, c, j] >= 0
            open_before = open_before or was_open
            if was_open and not active:
                close_candidate(st, kp, s, c, j, t - 1, last_end, t)
            if active and not was_open:
                opening = True
                st.open_first[s, c, j] = t
                st.open_start[s, c, j] = start
                st.open_sum[s, c, j] = 0.0
            if active:
                st.open_sum[s, c, j] += value
        score = st.last_scores[s, c]
        if kp.emit_open and opening and not open_before and score >= kp.class_threshold:
            write_record(rec_i, rec_f, cursor, s, KIND_OPEN, c, 0, t, 0, 0.0, start, 0.0, score, 0.0)

    @cuda.jit(device=True, inline="always")
    def oic_score(st, kp, s, c, p, index, newest):
        h = kp.horizon
        first, last = st.pend_first[s, c, p], st.pend_last[s, c, p]
        theta = kp.thresholds[st.pend_threshold[s, c, p]]
        left, right = outer_reach(first, last, kp.oic_lambda)
        oldest = max(0, index - h + 1)
        total, count = 0.0, 0
        for position in range(max(oldest, left), first):
            value = st.values[s, position % h, c]
            total += np.float64(value) if value >= theta else 0.0
            count += 1
        for position in range(last + 1, min(newest + 1, right)):
            value = st.values[s, position % h, c]
            total += np.float64(value) if value >= theta else 0.0
            count += 1
        outer = total / count if count > 0 else 0.0
        inner = st.pend_sum[s, c, p] / (last - first + 1)
        return (inner - outer) + mul(kp.gamma, st.last_scores[s, c])

    @cuda.jit(device=True, inline="always")
    def suppressed(st, kp, s, c, start, end):
        for e in range(st.emit_count[s, c]):
            other_start, other_end = st.emit_start[s, c, e], st.emit_end[s, c, e]
            inter = max(0.0, min(end, other_end) - max(start, other_start) + kp.iou_offset)
            union = (end - start + kp.iou_offset) + (other_end - other_start + kp.iou_offset) - inter
            if inter / union >= kp.nms_iou:
                return True
        return False

    @cuda.jit(device=True, inline="always")
    def keep_segment(st, s, c, start, end):
        n = st.emit_count[s, c]
        if n == st.emit_start.shape[2]:
            cuda.atomic.add(st.overflow, (s, OVERFLOW_SEGMENTS), 1)
            for e in range(1, n):
                st.emit_start[s, c, e - 1] = st.emit_start[s, c, e]
                st.emit_end[s, c, e - 1] = st.emit_end[s, c, e]
            n -= 1
        st.emit_start[s, c, n] = start
        st.emit_end[s, c, n] = end
        st.emit_count[s, c] = n + 1

    @cuda.jit(device=True, inline="always")
    def drop_ready(st, s, c, t, everything):
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

    @cuda.jit(device=True, inline="always")
    def emit_class(st, kp, s, c, t, index, newest, everything, step, now, rec_i, rec_f, cursor):
        """``causal_cpu.emit_class``: class c's ready candidates scored, ranked (stable), suppressed, emitted."""
        ready = 0
        for p in range(st.pend_count[s, c]):
            if everything or st.pend_ready[s, c, p] <= t:
                st.scratch_order[s, c, ready] = p
                ready += 1
        if ready == 0:
            return
        if st.last_scores[s, c] >= kp.class_threshold:
            for r in range(ready):
                score = oic_score(st, kp, s, c, st.scratch_order[s, c, r], index, newest)
                st.scratch_score[s, c, r] = score
                st.scratch_key[s, c, r] = math.floor(score * RANK_SCALE + 0.5)
            for a in range(1, ready):
                p, key, score = st.scratch_order[s, c, a], st.scratch_key[s, c, a], st.scratch_score[s, c, a]
                b = a
                while b > 0 and st.scratch_key[s, c, b - 1] < key:
                    st.scratch_order[s, c, b] = st.scratch_order[s, c, b - 1]
                    st.scratch_key[s, c, b] = st.scratch_key[s, c, b - 1]
                    st.scratch_score[s, c, b] = st.scratch_score[s, c, b - 1]
                    b -= 1
                st.scratch_order[s, c, b], st.scratch_key[s, c, b], st.scratch_score[s, c, b] = p, key, score
            for r in range(ready):
                p = st.scratch_order[s, c, r]
                start, end = st.pend_start[s, c, p], st.pend_end[s, c, p]
                if suppressed(st, kp, s, c, start, end):
                    continue
                keep_segment(st, s, c, start, end)
                write_record(rec_i, rec_f, cursor, s, KIND_SEGMENT, c, st.pend_threshold[s, c, p], step,
                             st.pend_closed[s, c, p], st.scratch_key[s, c, r], start, end,
                             st.scratch_score[s, c, r], now)
        drop_ready(st, s, c, t, everything)

    @cuda.jit(device=True, inline="always")
    def earliest_live(st, s, c):
        earliest = math.inf
        for p in range(st.pend_count[s, c]):
            earliest = min(earliest, st.pend_start[s, c, p])
        for j in range(st.open_first.shape[2]):
            if st.open_first[s, c, j] >= 0:
                earliest = min(earliest, st.open_start[s, c, j])
        return earliest

    @cuda.jit(device=True, inline="always")
    def forget_old_segments(st, s, last_end):
        """``causal_cpu.forget_old_segments``: every thread finds the slot's earliest live candidate."""
        tid = cuda.threadIdx.x
        classes = st.emit_count.shape[1]
        for c in range(tid, classes, threads):
            st.scratch_min[s, c] = earliest_live(st, s, c)
        cuda.syncthreads()
        horizon_start = math.inf
        for c in range(classes):
            horizon_start = min(horizon_start, st.scratch_min[s, c])
        if horizon_start == math.inf:
            horizon_start = last_end
        horizon_start -= FORGET_MARGIN_S
        for c in range(tid, classes, threads):
            n = st.emit_count[s, c]
            if n == 0 or st.emit_end[s, c, 0] >= horizon_start:
                continue
            kept = 0
            for e in range(n):
                if st.emit_end[s, c, e] >= horizon_start:
                    st.emit_start[s, c, kept] = st.emit_start[s, c, e]
                    st.emit_end[s, c, kept] = st.emit_end[s, c, e]
                    kept += 1
            st.emit_count[s, c] = kept
        cuda.syncthreads()

    @cuda.jit(device=True, inline="always")
    def update_tracker(st, kp, s, i, t, last_end, rec_i, rec_f, cursor):
        """``SegmentTracker.update`` with column ``held[s, i]`` at index t; returns the new last end."""
        tid = cuda.threadIdx.x
        classes = st.ring.shape[2]
        start, end, now = st.held_times[s, i, 0], st.held_times[s, i, 1], st.held_times[s, i, 2]
        ready = 0
        for c in range(tid, classes, threads):
            st.values[s, t % kp.horizon, c] = np.float32(st.held[s, i, c])
            track_class(st, kp, s, c, i, t, start, last_end, rec_i, rec_f, cursor)
            for p in range(st.pend_count[s, c]):
                if st.pend_ready[s, c, p] <= t:
                    ready = 1
        any_ready = cuda.syncthreads_or(ready)
        if t + 1 >= kp.warmup and any_ready:
            for c in range(tid, classes, threads):
                emit_class(st, kp, s, c, t, t, t, False, t, now, rec_i, rec_f, cursor)
            cuda.syncthreads()
            forget_old_segments(st, s, end)
        return end

    @cuda.jit(device=True, inline="always")
    def reset_slot(st, s):
        tid = cuda.threadIdx.x
        for c in range(tid, st.open_first.shape[1], threads):
            for j in range(st.open_first.shape[2]):
                st.open_first[s, c, j] = -1
            st.pend_count[s, c] = 0
            st.emit_count[s, c] = 0
        if tid == 0:
            st.columns[s], st.seen[s], st.tracker_index[s], st.last_end[s], st.has_scores[s] = 0, 0, -1, 0.0, 0
            st.held_wide[s, 0], st.held_wide[s, 1] = 0, 0
        cuda.syncthreads()

    @cuda.jit(device=True, inline="always")
    def write_summary(st, s, b, summary):
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            pending = 0
            for c in range(st.pend_count.shape[1]):
                pending += st.pend_count[s, c]
            summary[b, 0], summary[b, 1] = st.columns[s], pending
            summary[b, 2], summary[b, 3] = st.overflow[s, OVERFLOW_PENDING], st.overflow[s, OVERFLOW_SEGMENTS]

    @cuda.jit
    def push(st, kp, slots, resets, offsets, cas, wide_c, weights, wide_w, times, rec_i, rec_f, cursor, summary):
        """``causal_cpu.push_slot`` for slot ``slots[blockIdx.x]`` (reset first where ``resets`` says)."""
        b = cuda.blockIdx.x
        s, tid = slots[b], cuda.threadIdx.x
        classes = st.ring.shape[2]
        if resets[b]:
            reset_slot(st, s)
        columns, seen, t, last_end = st.columns[s], st.seen[s], st.tracker_index[s], st.last_end[s]
        held_c, held_w = st.held_wide[s, 0] != 0, st.held_wide[s, 1] != 0
        cuda.syncthreads()
        for col in range(offsets[b], offsets[b + 1]):
            columns += 1
            row = columns - 1 if columns <= kp.warmup else 0
            for c in range(tid, classes, threads):
                st.held[s, row, c] = np.float64(cas[col, c])
                if kp.source != 0:
                    st.held_w[s, row, c] = np.float64(weights[col, c])
            if tid == 0:
                for k in range(3):
                    st.held_times[s, row, k] = times[col, k]
            cuda.syncthreads()
            count, narrow, narrow_w = 0, wide_c, wide_w
            if columns > kp.warmup:
                count = 1
            else:
                held_c, held_w = held_c or wide_c, held_w or wide_w
                if columns == kp.warmup:
                    count, narrow, narrow_w = columns, held_c, held_w
                    held_c, held_w = False, False
            if count > 0:
                score_columns(st, kp, s, count, seen, narrow, narrow_w)
                seen += count
                for i in range(count):
                    t += 1
                    last_end = update_tracker(st, kp, s, i, t, last_end, rec_i, rec_f, cursor)
        cuda.syncthreads()
        if tid == 0:
            st.columns[s], st.seen[s], st.tracker_index[s], st.last_end[s] = columns, seen, t, last_end
            st.has_scores[s] = 1 if seen > 0 else 0
            st.held_wide[s, 0], st.held_wide[s, 1] = 1 if held_c else 0, 1 if held_w else 0
        write_summary(st, s, b, summary)

    @cuda.jit
    def flush(st, kp, slots, resets, nows, rec_i, rec_f, cursor, summary):
        """``causal_cpu.flush_slot`` for slot ``slots[blockIdx.x]``; the slot starts afresh."""
        b = cuda.blockIdx.x
        s, tid = slots[b], cuda.threadIdx.x
        if resets[b]:
            reset_slot(st, s)
        columns, seen, t, last_end = st.columns[s], st.seen[s], st.tracker_index[s], st.last_end[s]
        held_c, held_w = st.held_wide[s, 0] != 0, st.held_wide[s, 1] != 0
        cuda.syncthreads()
        if 0 < columns < kp.warmup:
            score_columns(st, kp, s, columns, seen, held_c, held_w)
            seen += columns
            for i in range(columns):
                t += 1
                last_end = update_tracker(st, kp, s, i, t, last_end, rec_i, rec_f, cursor)
        if t >= 0 and seen > 0:
            when = last_end if math.isnan(nows[b]) else nows[b]
            for c in range(tid, st.open_first.shape[1], threads):
                for j in range(st.open_first.shape[2]):
                    if st.open_first[s, c, j] >= 0:
                        close_candidate(st, kp, s, c, j, t, last_end, t + 1)
                emit_class(st, kp, s, c, t, t, t, True, t + 1, when, rec_i, rec_f, cursor)
        cuda.syncthreads()
        reset_slot(st, s)
        write_summary(st, s, b, summary)

    @cuda.jit
    def find_nonfinite(columns, bad):
        for index in range(cuda.grid(1), columns.shape[0] * columns.shape[1], cuda.gridsize(1)):
            row = index // columns.shape[1]
            if not math.isfinite(columns[row, index - row * columns.shape[1]]):
                bad[0] = 1

    return SimpleNamespace(push=push, flush=flush, find_nonfinite=find_nonfinite)


KERNEL_NAMES = ("push", "flush", "find_nonfinite")


def kernel_signatures(state_type, params_type, cas_dtype: str = "float32") -> dict[str, tuple]:
    """Argument types of every kernel as ``ecm_edge.kernels.causal_cuda`` launches them (for ahead-of-time PTX
    compilation); ``state_type`` / ``params_type``: the numba types of its state and parameter tuples."""
    from numba import types

    def array(dtype, ndim: int = 1, layout: str = "C"):
        return types.Array(dtype, ndim, layout)

    f64, i64 = types.float64, types.int64
    columns = array(getattr(types, cas_dtype), 2, "A")
    return {
        "push": (state_type, params_type, array(i64), array(types.int8), array(i64), columns, types.boolean,
                 columns, types.boolean, array(f64, 2), array(i64, 2), array(f64, 2), array(i64),
                 array(i64, 2)),
        "flush": (state_type, params_type, array(i64), array(types.int8), array(f64), array(i64, 2),
                  array(f64, 2), array(i64), array(i64, 2)),
        "find_nonfinite": (columns, array(types.int32)),
    }
