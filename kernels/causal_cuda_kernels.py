"""The CUDA kernels of the causal post-processing (see ``ecm_edge.kernels.causal_cuda`` for the launches).

Imported only when the CUDA kernels run: it imports ``numba.cuda``. One block per stream slot, its threads over
the classes (thread ``tid`` takes classes ``tid, tid + threads, ...``). Per column the classes meet twice: the
softmax (thread 0 sums the exponentials in class order, as the reference) and the slot-wide rule that forgets
old segments (each thread reads every class's earliest live candidate). Per-slot counters are kept by every
thread alike and written back by thread 0 at the end. The arithmetic is ``causal_cpu``'s, with products that
meet a sum rounded on their own (``dmul_rn``: no fused multiply-add). The leaf device functions are
``causal_device``'s, compiled here as the CPU kernels compile them; what is defined here either splits the
classes over the threads, counts into shared counters atomically, or calls other device functions.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from numba import cuda

from ecm_edge.environment import cuda_simulator_enabled
from ecm_edge.kernels import causal_device
from ecm_edge.kernels.causal_cuda import S_COLUMNS, S_OVERFLOW_PENDING, S_OVERFLOW_SEGMENTS, S_PENDING
from ecm_edge.kernels.causal_state import (
    FORGET_MARGIN_S,
    KIND_OPEN,
    KIND_SEGMENT,
    OVERFLOW_PENDING,
    OVERFLOW_SEGMENTS,
    SOURCE_FUSED,
    SOURCE_WEIGHTS,
)
from ecm_edge.kernels.detections import RANK_SCALE


def build_kernels(threads: int) -> SimpleNamespace:
    """Every kernel for blocks of ``threads`` threads."""
    if cuda_simulator_enabled():
        @cuda.jit(device=True, inline="always")
        def mul(a, b):
            return a * b
    else:
        from numba.cuda import libdevice

        mul = libdevice.dmul_rn  # a product never contracted with a sum into an FMA

    # The leaf device functions, shared with the CPU kernels (``causal_device``).
    device = cuda.jit(device=True, inline="always")
    sorted_insert = device(causal_device.sorted_insert)
    sorted_replace = device(causal_device.sorted_replace)
    stats = device(causal_device.stats)
    stretch = device(causal_device.stretch)
    fuse = device(causal_device.fuse)
    top_k_mean = device(causal_device.top_k_mean)
    softmax_scores = device(causal_device.softmax_scores)
    store_record = device(causal_device.store_record)
    pend_candidate = device(causal_device.pend_candidate)
    outer_mean = device(causal_device.outer_mean)
    interval_iou = device(causal_device.interval_iou)
    keep_segment = device(causal_device.keep_segment)
    collect_ready = device(causal_device.collect_ready)
    rank_ready = device(causal_device.rank_ready)
    drop_ready = device(causal_device.drop_ready)
    earliest_live = device(causal_device.earliest_live)
    forget_segments = device(causal_device.forget_segments)
    reset_counters = device(causal_device.reset_counters)
    reset_class = device(causal_device.reset_class)

    @cuda.jit(device=True, inline="always")
    def ring_write(ring, window, s, c, position, before, horizon, value):
        new = np.float32(value)
        if before < horizon:
            sorted_insert(window, s, c, before, new)
        else:
            sorted_replace(window, s, c, horizon, ring[s, position, c], new)
        ring[s, position, c] = new

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
            st.scratch_means[s, c] = top_k_mean(st.sorted, s, c, filled, k)
        cuda.syncthreads()
        if tid == 0:
            softmax_scores(st, s, classes)
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
        """``store_record`` at the next free row of the launch's records (``cursor``: the rows taken)."""
        at = cuda.atomic.add(cursor, 0, 1)
        if at < rec_i.shape[0]:
            store_record(rec_i, rec_f, at, s, kind, c, j, step, closed, key, start, end, score, now)

    @cuda.jit(device=True, inline="always")
    def close_candidate(st, kp, s, c, j, last, end, step):
        ready = outer_reach(st.open_first[s, c, j], last, kp.oic_lambda)[1] - 1
        if not pend_candidate(st, s, c, j, last, end, step, ready):
            cuda.atomic.add(st.overflow, (s, OVERFLOW_PENDING), 1)  # the block's threads share the counter

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
        outer = outer_mean(st.values, s, c, h, theta, max(oldest, left), first, last, min(newest + 1, right))
        inner = st.pend_sum[s, c, p] / (last - first + 1)
        return (inner - outer) + mul(kp.gamma, st.last_scores[s, c])

    @cuda.jit(device=True, inline="always")
    def suppressed(st, kp, s, c, start, end):
        for e in range(st.emit_count[s, c]):
            if interval_iou(start, end, st.emit_start[s, c, e], st.emit_end[s, c, e], kp.iou_offset) >= kp.nms_iou:
                return True
        return False

    @cuda.jit(device=True, inline="always")
    def emit_class(st, kp, s, c, t, index, newest, everything, step, now, rec_i, rec_f, cursor):
        """``causal_cpu.emit_class``: class c's ready candidates scored, ranked (stable), suppressed, emitted."""
        ready = collect_ready(st, s, c, t, everything)
        if ready == 0:
            return
        if st.last_scores[s, c] >= kp.class_threshold:
            for r in range(ready):
                score = oic_score(st, kp, s, c, st.scratch_order[s, c, r], index, newest)
                st.scratch_score[s, c, r] = score
                st.scratch_key[s, c, r] = math.floor(score * RANK_SCALE + 0.5)
            rank_ready(st, s, c, ready)
            for r in range(ready):
                p = st.scratch_order[s, c, r]
                start, end = st.pend_start[s, c, p], st.pend_end[s, c, p]
                if suppressed(st, kp, s, c, start, end):
                    continue
                if keep_segment(st, s, c, start, end):
                    cuda.atomic.add(st.overflow, (s, OVERFLOW_SEGMENTS), 1)
                write_record(rec_i, rec_f, cursor, s, KIND_SEGMENT, c, st.pend_threshold[s, c, p], step,
                             st.pend_closed[s, c, p], st.scratch_key[s, c, r], start, end,
                             st.scratch_score[s, c, r], now)
        drop_ready(st, s, c, t, everything)

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
            forget_segments(st, s, c, horizon_start)
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
            reset_class(st, s, c)
        if tid == 0:
            reset_counters(st, s)
        cuda.syncthreads()

    @cuda.jit(device=True, inline="always")
    def write_summary(st, s, b, summary):
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            pending = 0
            for c in range(st.pend_count.shape[1]):
                pending += st.pend_count[s, c]
            summary[b, S_COLUMNS], summary[b, S_PENDING] = st.columns[s], pending
            summary[b, S_OVERFLOW_PENDING] = st.overflow[s, OVERFLOW_PENDING]
            summary[b, S_OVERFLOW_SEGMENTS] = st.overflow[s, OVERFLOW_SEGMENTS]

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
