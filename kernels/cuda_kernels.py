"""The CUDA kernels of the post-processing (see ``ecm_edge.kernels.cuda`` for the stages and launches).

Imported only when the CUDA kernels run: it imports ``numba.cuda``. Kernels are built per block size by
:func:`build_kernels`, which makes the block size a compile-time constant (shared-memory arrays need one).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
from numba import cuda

from ecm_edge.environment import cuda_simulator_enabled
from ecm_edge.kernels.detections import RANK_SCALE
from ecm_edge.kernels.reference import FLOAT32_MAX


def build_kernels(threads: int) -> SimpleNamespace:
    """Every kernel for blocks of ``threads`` threads."""
    if cuda_simulator_enabled():  # plain Python arithmetic on numpy scalars: each operation rounded on its own
        @cuda.jit(device=True, inline="always")
        def mul(a, b):
            return a * b

        @cuda.jit(device=True, inline="always")
        def add(a, b):
            return a + b

        @cuda.jit(device=True, inline="always")
        def sub(a, b):
            return a - b

        fmul, fadd, fsub = mul, add, sub
    else:
        from numba.cuda import libdevice

        # Each operation rounded on its own: a product is never contracted with a sum into an FMA.
        mul = libdevice.dmul_rn
        fmul, fadd, fsub = libdevice.fmul_rn, libdevice.fadd_rn, libdevice.fsub_rn

    @cuda.jit(device=True, inline="always")
    def block_scan(buffer, tid, value):
        """Inclusive prefix sum over the block (every thread calls it); returns (inclusive, block total)."""
        buffer[tid] = value
        cuda.syncthreads()
        offset = 1
        while offset < threads:
            addend = buffer[tid - offset] if tid >= offset else 0
            cuda.syncthreads()
            buffer[tid] += addend
            cuda.syncthreads()
            offset *= 2
        inclusive = buffer[tid]
        total = buffer[threads - 1]
        cuda.syncthreads()
        return inclusive, total

    @cuda.jit(device=True, inline="always")
    def last_at_most(offsets, value):
        """The largest i with offsets[i] ≤ value (offsets non-decreasing, offsets[0] ≤ value)."""
        lo, hi = 0, offsets.shape[0] - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if offsets[mid] <= value:
                lo = mid
            else:
                hi = mid - 1
        return lo

    @cuda.jit(device=True, inline="always")
    def normalized(cas, v, c, t, low, delta, opencv):
        """Snippet t of the normalized row; for OpenCV's interpolation (``ecm``) rounded to float32, saturating
        (``reference.float32_row``; normalized values are at most 1)."""
        value = (np.float64(cas[v, c, t]) - low) / delta
        if opencv:
            return np.float64(np.float32(max(value, -FLOAT32_MAX)))
        return value

    @cuda.jit(device=True, inline="always")
    def opencv_lerp(a, b, frac):
        """``a · (1 − f) + b · f`` as OpenCV computes it for a float32 row: every operation rounded to float32."""
        f = np.float32(frac)
        return np.float64(fadd(fmul(np.float32(a), fsub(np.float32(1.0), f)), fmul(np.float32(b), f)))

    @cuda.jit(device=True, inline="always")
    def sample(cas, v, c, length, j, scale, low, delta, opencv):
        """Frame j of the normalized row, interpolated with half-pixel centers (the reference's arithmetic:
        ``interpolate_opencv`` when ``opencv``, else ``interpolate_row``)."""
        src = mul(j + 0.5, scale) - 0.5
        if opencv:
            src = np.float64(np.float32(src))
        if src < 0.0:
            src = 0.0
        left = int(src)
        if left >= length - 1:
            return normalized(cas, v, c, length - 1, low, delta, opencv)
        frac = src - left
        a = normalized(cas, v, c, left, low, delta, opencv)
        b = normalized(cas, v, c, left + 1, low, delta, opencv)
        if opencv:
            return opencv_lerp(a, b, frac)
        return mul(a, 1.0 - frac) + mul(b, frac)

    @cuda.jit(device=True, inline="always")
    def threshold_level(value, thresholds):
        level = 0
        for k in range(thresholds.shape[0]):
            if thresholds[k] <= value:
                level += 1
        return level if value > 0.0 else 0

    @cuda.jit(device=True, inline="always")
    def interval_iou(start_a, end_a, start_b, end_b, one):
        inter = max(0.0, min(end_a, end_b) - max(start_a, start_b) + one)
        union = (end_a - start_a + one) + (end_b - start_b + one) - inter
        return inter / union

    @cuda.jit
    def row_stats(cas, lengths, low, delta, bad):
        lo_buf = cuda.shared.array(threads, np.float64)
        hi_buf = cuda.shared.array(threads, np.float64)
        bad_buf = cuda.shared.array(threads, np.int32)
        tid = cuda.threadIdx.x
        classes = cas.shape[1]
        for row in range(cuda.blockIdx.x, cas.shape[0] * classes, cuda.gridDim.x):
            v = row // classes
            c = row - v * classes
            lo, hi, nonfinite = math.inf, -math.inf, 0
            for t in range(tid, lengths[v], threads):
                x = np.float64(cas[v, c, t])
                if not math.isfinite(x):
                    nonfinite = 1
                lo = min(lo, x)
                hi = max(hi, x)
            lo_buf[tid], hi_buf[tid], bad_buf[tid] = lo, hi, nonfinite
            cuda.syncthreads()
            step = threads // 2
            while step > 0:
                if tid < step:
                    lo_buf[tid] = min(lo_buf[tid], lo_buf[tid + step])
                    hi_buf[tid] = max(hi_buf[tid], hi_buf[tid + step])
                    bad_buf[tid] = max(bad_buf[tid], bad_buf[tid + step])
                cuda.syncthreads()
                step //= 2
            if tid == 0:
                min_plus = max(lo_buf[0], 0.0)
                divisor = max(hi_buf[0], 0.0) - min_plus
                low[row] = min_plus
                delta[row] = divisor if divisor > 0 else 1.0
                bad[row] = bad_buf[0]
            cuda.syncthreads()

    @cuda.jit
    def interpolate(cas, lengths, num_frames, pair_video, pair_class, frame_offsets, low, delta, thresholds, opencv,
                    prefix, levels):
        classes = cas.shape[1]
        first = cuda.blockIdx.x * threads + cuda.threadIdx.x
        for p in range(cuda.blockIdx.y, pair_video.shape[0], cuda.gridDim.y):
            v, c = pair_video[p], pair_class[p]
            length, n = lengths[v], num_frames[v]
            scale = 1.0 / (n / length) if opencv else length / n  # OpenCV's step, or the exact one
            row = v * classes + c
            base = frame_offsets[p]
            if first == 0:
                prefix[base + p] = 0.0
            for j in range(first, n, cuda.gridDim.x * threads):
                value = sample(cas, v, c, length, j, scale, low[row], delta[row], opencv)
                prefix[base + p + 1 + j] = max(value, 0.0)
                levels[base + j] = threshold_level(value, thresholds)

    @cuda.jit
    def prefix_scan(frame_offsets, pair_frames, prefix):
        buffer = cuda.shared.array(threads, np.float64)
        tid = cuda.threadIdx.x
        for p in range(cuda.blockIdx.x, pair_frames.shape[0], cuda.gridDim.x):
            q = frame_offsets[p] + p + 1
            n = pair_frames[p]
            carry = 0.0
            for tile in range(0, n, threads):
                j = tile + tid
                inclusive, total = block_scan(buffer, tid, prefix[q + j] if j < n else 0.0)
                if j < n:
                    prefix[q + j] = carry + inclusive
                carry += total

    @cuda.jit
    def count_runs(levels, frame_offsets, pair_frames, num_thresholds, drops_lone_first, counts):
        tid = cuda.threadIdx.x
        for segment in range(cuda.blockIdx.x, pair_frames.shape[0] * num_thresholds, cuda.gridDim.x):
            p = segment // num_thresholds
            k = segment - p * num_thresholds
            base, n = frame_offsets[p], pair_frames[p]
            starts = 0
            for j in range(tid, n, threads):
                if levels[base + j] > k and (j == 0 or levels[base + j - 1] <= k):
                    starts += 1
            if starts > 0:
                cuda.atomic.add(counts, segment, starts)
            cuda.syncthreads()
            # The published quirk: a threshold whose only surviving frame is frame 0 yields no proposal.
            if tid == 0 and drops_lone_first and counts[segment] == 1 and levels[base] > k \
                    and (n == 1 or levels[base + 1] <= k):
                counts[segment] = 0
            cuda.syncthreads()

    @cuda.jit
    def find_runs(levels, frame_offsets, pair_frames, num_thresholds, proposal_offsets, run_start, run_end):
        buffer = cuda.shared.array(threads, np.int32)
        tid = cuda.threadIdx.x
        for segment in range(cuda.blockIdx.x, pair_frames.shape[0] * num_thresholds, cuda.gridDim.x):
            slot = proposal_offsets[segment]
            if proposal_offsets[segment + 1] == slot:
                continue
            p = segment // num_thresholds
            k = segment - p * num_thresholds
            base, n = frame_offsets[p], pair_frames[p]
            carry = 0
            for tile in range(0, n, threads):
                j = tile + tid
                inside = j < n and levels[base + j] > k
                starts = inside and (j == 0 or levels[base + j - 1] <= k)
                ends = inside and (j == n - 1 or levels[base + j + 1] <= k)
                inclusive, total = block_scan(buffer, tid, 1 if starts else 0)
                run = slot + carry + inclusive - 1  # the run holding frame j: starts so far, minus one
                if starts:
                    run_start[run] = j
                if ends:
                    run_end[run] = j
                carry += total

    @cuda.jit
    def score_runs(prefix, frame_offsets, pair_frames, pair_video, pair_scores, fps, duration, num_thresholds,
                   proposal_offsets, oic_lambda, gamma, time_by_duration, run_start, run_end, score, start_s,
                   end_s):
        for r in range(cuda.grid(1), proposal_offsets[proposal_offsets.shape[0] - 1], cuda.gridsize(1)):
            segment = last_at_most(proposal_offsets, r)
            p = segment // num_thresholds
            lo, hi = proposal_offsets[segment], proposal_offsets[segment + 1]
            n = pair_frames[p]
            q = frame_offsets[p] + p
            s, e = run_start[r], run_end[r]
            length = e - s + 1
            inner = (prefix[q + e + 1] - prefix[q + s]) / length
            reach = mul(oic_lambda, np.float64(length))
            outer_start = max(0, int(s - reach))
            outer_end = min(n, int(e + reach))
            count = (s - outer_start) + max(0, outer_end - (e + 1))
            outer = 0.0
            if count > 0:
                mass = 0.0
                other = r - 1
                while other >= lo and run_end[other] >= outer_start:
                    mass += prefix[q + run_end[other] + 1] - prefix[q + max(run_start[other], outer_start)]
                    other -= 1
                other = r + 1
                while other < hi and run_start[other] < outer_end:
                    mass += prefix[q + min(run_end[other], outer_end - 1) + 1] - prefix[q + run_start[other]]
                    other += 1
                outer = mass / count
            score[r] = inner - outer + mul(gamma, pair_scores[p])
            v = pair_video[p]
            if time_by_duration:
                start_s[r] = s / n * duration[v]
                end_s[r] = (e + 1) / n * duration[v]
            else:
                start_s[r] = s / fps[v]
                end_s[r] = (e + 1) / fps[v]

    @cuda.jit
    def nms_order(score, pair_offsets, device_nms, order, kept):
        for r in range(cuda.grid(1), pair_offsets[pair_offsets.shape[0] - 1], cuda.gridsize(1)):
            kept[r] = -1
            p = last_at_most(pair_offsets, r)
            if device_nms[p] == 0:
                order[r] = r
                continue
            a, b = pair_offsets[p], pair_offsets[p + 1]
            mine = math.floor(score[r] * RANK_SCALE + 0.5)
            rank = 0
            for j in range(a, b):
                key = math.floor(score[j] * RANK_SCALE + 0.5)
                if key > mine or (key == mine and j < r):
                    rank += 1
            order[a + rank] = r

    @cuda.jit
    def nms_mask(order, start_s, end_s, pair_offsets, mask_offsets, iou_threshold, one, mask):
        for index in range(cuda.grid(1), mask_offsets[mask_offsets.shape[0] - 1], cuda.gridsize(1)):
            p = last_at_most(mask_offsets, index)
            a = pair_offsets[p]
            m = pair_offsets[p + 1] - a
            words = (m + 63) // 64
            local = index - mask_offsets[p]
            i = local // words
            w = local - i * words
            qi = order[a + i]
            bits = np.int64(0)
            for bit in range(64):
                j = w * 64 + bit
                if i < j < m:
                    qj = order[a + j]
                    if interval_iou(start_s[qi], end_s[qi], start_s[qj], end_s[qj], one) >= iou_threshold:
                        bits |= np.int64(1) << np.int64(bit)
            mask[index] = bits

    @cuda.jit
    def nms_sweep(mask, pair_offsets, mask_offsets, removed_offsets, device_nms, removed, kept):
        for p in range(cuda.grid(1), pair_offsets.shape[0] - 1, cuda.gridsize(1)):
            if device_nms[p] == 0:
                continue
            a = pair_offsets[p]
            m = pair_offsets[p + 1] - a
            words = (m + 63) // 64
            base, row = removed_offsets[p], mask_offsets[p]
            for w in range(words):
                removed[base + w] = 0
            for i in range(m):
                w = i // 64
                if (removed[base + w] >> (i - w * 64)) & 1:
                    kept[a + i] = 0
                    continue
                kept[a + i] = 1
                for x in range(w, words):
                    removed[base + x] |= mask[row + i * words + x]

    @cuda.jit
    def gather(order, kept, score, start_s, end_s, out):
        for slot in range(cuda.grid(1), order.shape[0], cuda.gridsize(1)):
            q = order[slot]
            out[slot, 0] = score[q]
            out[slot, 1] = start_s[q]
            out[slot, 2] = end_s[q]
            out[slot, 3] = kept[slot]

    return SimpleNamespace(row_stats=row_stats, interpolate=interpolate, prefix_scan=prefix_scan,
                           count_runs=count_runs, find_runs=find_runs, score_runs=score_runs, nms_order=nms_order,
                           nms_mask=nms_mask, nms_sweep=nms_sweep, gather=gather)


KERNEL_NAMES = ("row_stats", "interpolate", "prefix_scan", "count_runs", "find_runs", "score_runs", "nms_order",
                "nms_mask", "nms_sweep", "gather")


def kernel_signatures(cas_dtype: str = "float32") -> dict[str, tuple]:
    """Argument types of every kernel as ``ecm_edge.kernels.cuda`` launches them (for ahead-of-time PTX compilation)."""
    from numba import types

    def array(dtype: Any, ndim: int = 1, layout: str = "C") -> Any:
        return types.Array(dtype, ndim, layout)

    f64, i64, i32, i16, i8 = types.float64, types.int64, types.int32, types.int16, types.int8
    cas = array(getattr(types, cas_dtype), 3, "A")
    return {
        "row_stats": (cas, array(i64), array(f64), array(f64), array(i32)),
        "interpolate": (cas, array(i64), array(i64), array(i64), array(i64), array(i64), array(f64), array(f64),
                        array(f64), types.boolean, array(f64), array(i16)),
        "prefix_scan": (array(i64), array(i64), array(f64)),
        "count_runs": (array(i16), array(i64), array(i64), i64, types.boolean, array(i32)),
        "find_runs": (array(i16), array(i64), array(i64), i64, array(i64), array(i64), array(i64)),
        "score_runs": (array(f64), array(i64), array(i64), array(i64), array(f64), array(f64), array(f64), i64,
                       array(i64), f64, f64, types.boolean, array(i64), array(i64), array(f64), array(f64),
                       array(f64)),
        "nms_order": (array(f64), array(i64), array(i8), array(i64), array(i8)),
        "nms_mask": (array(i64), array(f64), array(f64), array(i64), array(i64), f64, f64, array(i64)),
        "nms_sweep": (array(i64), array(i64), array(i64), array(i64), array(i8), array(i64), array(i8)),
        "gather": (array(i64), array(i8), array(f64), array(f64), array(f64), array(f64, 2)),
    }
