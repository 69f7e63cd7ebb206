"""The CPU kernels: numba ``@njit`` kernels, parallel over (video, kept class) pairs, cached on disk.

A kept row is interpolated from T snippets to ``num_frames`` samples, usually about ten times more, and most
of those samples never need computing. Frames whose interpolation position lies between snippets κ and κ + 1
form *segment* κ (segment −1: before the first snippet's center, segment T − 1: after the last one's), and
their values lie, up to rounding, between the two snippet values. Unless a threshold falls in that range, every
frame of the segment has the same *level*: the number of activation thresholds it passes (thresholds ascend,
so a frame is in a run at threshold k exactly when k < level). ``normalize_rows`` first writes every kept row,
normalized, in float64 (the one stage that sees the CAS dtype; its input may be any [N, C, T] score array); then
two passes per pair:

1. ``build_profile``: walk the normalized row's segments, skipping those whose values all stay below 0
   (level 0, no mass: most of a row); find a segment's first frame with the reference's exact position
   arithmetic; accumulate Q, the prefix sum of ``max(value, 0)``, at segment starts (closed form inside a
   segment); record the level profile as *pieces* (start frame, level, Q there) wherever the level changes,
   evaluating frame by frame only the segments a threshold crosses, with the reference's exact arithmetic, so
   the runs are bit-identical to the reference's. Count the runs per threshold from the level steps.
2. ``score_and_suppress``: with every pair's proposal slots known, rebuild the runs (and Q at their bounds) from
   the pieces, score each run by OIC, and run a greedy NMS per pair. Inside a run's outer window the
   thresholded row is non-zero only on other runs of the same threshold, so its mass there is the sum of their
   overlaps: prefix-sum differences, read from the runs, or from Q at a clipped window edge.

In ``ecm`` mode the row is interpolated as ``cv2.resize`` does a float32 row (``PostParams.opencv_interpolation``;
``ecm_edge.kernels.reference.interpolate_opencv``): the normalized row is rounded to float32, positions are rounded
to float32, and each sample is computed in float32. Its values are not an affine function of the frame, so Q
inside a segment is summed frame by frame there instead of in closed form; the level profile is found as above,
with a float32 rounding margin.

The work per pair is O(T + frames in threshold-crossing segments + runs), not O(num_frames · thresholds) (in
``ecm`` mode also O(frames with a positive value)), and no thresholded copy of a row is ever made. Each pass runs
over the pairs with ``prange`` when there are enough of them (``*_parallel``), else on the calling thread
(``*_serial``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ecm_edge.kernels.detections import RANK_SCALE, empty_detections, pack_detections
from ecm_edge.kernels.inputs import VideoBatch, kept_pairs
from ecm_edge.kernels.params import PostParams
from ecm_edge.kernels.reference import float32_row

# A segment's interpolated values lie within this many machine epsilons times (|a| + |b|) of the range of its
# snippet values a, b (the rounding bound is 2 in float64, 4 in float32: OpenCV's weights need not sum to 1); no
# threshold outside that range can split the segment's level. Indexed by PostParams.opencv_interpolation.
ROUNDING_MARGIN = (4.0 * np.finfo(np.float64).eps, 8.0 * np.finfo(np.float32).eps)
# Relative slack of the NMS search window, far above float64 rounding of second values.
WINDOW_SLACK = 1e-9
# Below this many (video, class) pairs a call runs on one thread: waking the thread pool costs more than it saves.
PARALLEL_MIN_PAIRS = 8


def localize_cpu(batch: VideoBatch, params: PostParams) -> np.ndarray:
    """Detections of every video of a host batch (see ``ecm_edge.postprocess.localize_batch``)."""
    pair_video, pair_class = kept_pairs(batch.video_scores, params.class_threshold)
    num_pairs = pair_video.size
    if num_pairs == 0:
        return empty_detections()
    thresholds = np.ascontiguousarray(params.act_thresholds)
    pair_length, pair_frames = batch.lengths[pair_video], batch.num_frames[pair_video]
    row_offsets = _offsets(pair_length)
    segment_offsets = _offsets(pair_length + 2)
    piece_offsets = _offsets(pair_frames)
    rows = np.empty(row_offsets[-1], dtype=np.float64)
    segment_first = np.empty(segment_offsets[-1], dtype=np.int64)
    segment_mass = np.empty(segment_offsets[-1], dtype=np.float64)
    piece_start = np.empty(piece_offsets[-1], dtype=np.int64)
    piece_level = np.empty(piece_offsets[-1], dtype=np.int16)
    piece_mass = np.empty(piece_offsets[-1], dtype=np.float64)
    piece_count = np.empty(num_pairs, dtype=np.int64)
    counts = np.zeros((num_pairs, thresholds.size), dtype=np.int64)
    parallel = num_pairs >= PARALLEL_MIN_PAIRS
    pass_one = build_profiles_parallel if parallel else build_profiles_serial
    opencv = params.opencv_interpolation
    normalize_rows(batch.cas, batch.lengths, pair_video, pair_class, row_offsets, rows)
    if opencv:
        rows[:] = float32_row(rows)  # the float32 row that cv2.resize receives, kept in float64
    pass_one(batch.num_frames, pair_video, thresholds, params.drops_lone_first_frame, opencv,
             ROUNDING_MARGIN[opencv], row_offsets, segment_offsets, piece_offsets, rows, segment_first,
             segment_mass, piece_start, piece_level, piece_mass, piece_count, counts)

    proposal_offsets = _offsets(counts.ravel())
    total = int(proposal_offsets[-1])
    run_start, run_end = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
    mass_start, mass_end = np.empty(total, dtype=np.float64), np.empty(total, dtype=np.float64)
    score, start_s, end_s = (np.empty(total, dtype=np.float64) for _ in range(3))
    kept_order = np.empty(total, dtype=np.int64)
    pair_kept = np.empty(num_pairs, dtype=np.int64)
    pair_scores = batch.video_scores[pair_video, pair_class]
    pass_two = score_and_suppress_parallel if parallel else score_and_suppress_serial
    pass_two(batch.num_frames, batch.fps, batch.duration, pair_video, pair_scores, thresholds.size,
             row_offsets, segment_offsets, piece_offsets, rows, segment_first, segment_mass,
             piece_start, piece_level, piece_mass, piece_count, proposal_offsets, opencv,
             params.oic_lambda, params.gamma, params.nms_iou, params.iou_offset, params.time_by_duration,
             run_start, run_end, mass_start, mass_end, score, start_s, end_s, kept_order, pair_kept)
    columns = gather_detections(pair_video, pair_class, proposal_offsets[:-1:thresholds.size], pair_kept,
                                kept_order, start_s, end_s, score)
    return pack_detections(*columns)


def _offsets(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)


# ---- the row: normalization, interpolation and its segments (the input row may be any [T] score array) -------


@njit(cache=True)
def normalize_row(row, out):
    """``out = (row − relu(min)) / (relu(max) − relu(min))`` in float64, the divisor replaced by 1 when ≤ 0."""
    lo, hi = row[0], row[0]
    for x in row:
        lo = min(lo, x)
        hi = max(hi, x)
    min_plus = max(np.float64(lo), 0.0)
    delta = max(np.float64(hi), 0.0) - min_plus
    if delta <= 0:
        delta = 1.0
    for t in range(row.shape[0]):
        out[t] = (np.float64(row[t]) - min_plus) / delta


@njit(cache=True, inline="always")
def interpolation_scale(length, n, opencv):
    """Source step per frame: ``T / n``, or OpenCV's ``1 / (n / T)`` (``reference.opencv_scale``)."""
    if opencv:
        return 1.0 / (n / length)
    return length / n


@njit(cache=True, inline="always")
def position(j, scale, opencv):
    """Where frame j reads the row: ``(j + 0.5) · scale − 0.5`` (half-pixel centers), unclamped; OpenCV rounds it
    to float32."""
    src = (j + 0.5) * scale - 0.5
    if opencv:
        return np.float64(np.float32(src))
    return src


@njit(cache=True, inline="always")
def opencv_lerp(a, b, frac):
    """``a · (1 − f) + b · f`` as OpenCV computes it for a float32 row: every operation rounded to float32."""
    f = np.float32(frac)
    return np.float64(np.float32(a) * (np.float32(1.0) - f) + np.float32(b) * f)


@njit(cache=True, inline="always")
def sample(row, j, scale, opencv):
    """Frame j of ``row`` linearly interpolated (``scale`` from ``interpolation_scale``), as the reference
    computes it."""
    src = position(j, scale, opencv)
    if src < 0.0:
        src = 0.0
    left = int(src)
    if left >= row.shape[0] - 1:
        return row[row.shape[0] - 1]
    frac = src - left
    if opencv:
        return opencv_lerp(row[left], row[left + 1], frac)
    return row[left] * (1.0 - frac) + row[left + 1] * frac


@njit(cache=True, inline="always")
def frame_segment(j, scale, length, opencv):
    """Index g = κ + 1 of the segment of frame j (0: before the first snippet's center, T: after the last)."""
    src = position(j, scale, opencv)
    if src < 0.0:
        return 0
    return min(int(src), length - 1) + 1


@njit(cache=True, inline="always")
def segment_values(row, g):
    """The snippet values segment g interpolates between (equal for the two end segments)."""
    if g == 0:
        return row[0], row[0]
    if g >= row.shape[0]:
        return row[row.shape[0] - 1], row[row.shape[0] - 1]
    return row[g - 1], row[g]


@njit(cache=True, inline="always")
def positive_mass(row, scale, opencv, g, j0, m):
    """Σ max(value, 0) over frames j0 .. j0 + m − 1 of segment g: closed form when the values are affine in the
    frame and do not cross 0, else frame by frame."""
    if m <= 0:
        return 0.0
    a, b = segment_values(row, g)
    if g == 0 or g >= row.shape[0]:
        return m * max(a, 0.0)
    if a <= 0.0 and b <= 0.0:
        return 0.0
    if a >= 0.0 and b >= 0.0 and not opencv:
        first = position(j0, scale, opencv) - (g - 1)
        return m * a + (b - a) * (m * first + scale * (m * (m - 1) * 0.5))
    if opencv:
        return opencv_positive_mass(a, b, g - 1, scale, j0, m)
    total = 0.0
    for j in range(j0, j0 + m):
        total += max(sample(row, j, scale, opencv), 0.0)
    return total


@njit(cache=True)
def opencv_positive_mass(a, b, left, scale, j0, m):
    """``positive_mass`` of an interior segment in ``ecm`` mode: every frame reads ``row[left]`` = a and
    ``row[left + 1]`` = b, so ``sample``'s clamping and indexing are hoisted out of the loop (same values)."""
    a32, b32, one, left32 = np.float32(a), np.float32(b), np.float32(1.0), np.float32(left)
    total = 0.0
    for j in range(j0, j0 + m):
        f = np.float32((j + 0.5) * scale - 0.5) - left32
        value = a32 * (one - f) + b32 * f
        if value > 0.0:
            total += np.float64(value)
    return total


@njit(cache=True, inline="always")
def segment_start(g, n, scale, opencv):
    """The first frame of segment g: the first whose position reaches g − 1 (0 for g = 0, n for g = T + 1)."""
    if g == 0:
        return 0
    frame = min(max(math.ceil((g - 0.5) / scale - 0.5), 0), n)  # estimate, then exact
    while frame > 0 and position(frame - 1, scale, opencv) >= g - 1:
        frame -= 1
    while frame < n and position(frame, scale, opencv) < g - 1:
        frame += 1
    return frame


@njit(cache=True, inline="always")
def prefix_mass(row, scale, opencv, first, mass, x):
    """Q(x) = Σ max(value, 0) over frames < x."""
    if x >= first[first.shape[0] - 1]:
        return mass[mass.shape[0] - 1]
    g = frame_segment(x, scale, row.shape[0], opencv)
    return mass[g] + positive_mass(row, scale, opencv, g, first[g], x - first[g])


@njit(cache=True, inline="always")
def threshold_level(value, thresholds):
    """How many (ascending, non-negative) thresholds a value passes: value ≥ θ and value > 0."""
    level = 0
    for k in range(thresholds.shape[0]):
        level += thresholds[k] <= value
    return level if value > 0.0 else 0


@njit(cache=True, inline="always")
def level_between(value, thresholds, low, high):
    """``threshold_level`` of a value known to pass thresholds below ``low`` and none from ``high`` on."""
    level = low
    for k in range(low, high):
        level += thresholds[k] <= value
    return level if value > 0.0 else 0


# ---- pass 1: segments, level profile, run counts -------------------------------------------------------------


@njit(cache=True)
def normalize_rows(cas, lengths, pair_video, pair_class, row_offsets, rows):
    """The normalized float64 row of every pair, into ``rows`` (the only stage that sees the CAS dtype)."""
    for p in range(pair_video.shape[0]):
        v = pair_video[p]
        normalize_row(cas[v, pair_class[p], : lengths[v]], rows[row_offsets[p] : row_offsets[p + 1]])


@njit(cache=True)
def build_profile(p, num_frames, pair_video, thresholds, drops_lone_first, opencv, margin, row_offsets,
                  segment_offsets, piece_offsets, rows, segment_first, segment_mass, piece_start, piece_level,
                  piece_mass, piece_count, counts):
    """Pass 1 (see the module docstring) for pair p, from its normalized row."""
    n = num_frames[pair_video[p]]
    row = rows[row_offsets[p] : row_offsets[p + 1]]
    scale = interpolation_scale(row.shape[0], n, opencv)
    first = segment_first[segment_offsets[p] : segment_offsets[p + 1]]
    mass = segment_mass[segment_offsets[p] : segment_offsets[p + 1]]
    base = piece_offsets[p]
    pieces = level_pieces(row, n, scale, opencv, margin, thresholds, first, mass, piece_start[base:],
                          piece_level[base:], piece_mass[base:], counts[p])
    piece_count[p] = pieces
    if drops_lone_first:
        drop_lone_first_frame(piece_start[base:], piece_level[base:], pieces, n, counts[p])


@njit(cache=True, parallel=True)
def build_profiles_parallel(*args):
    for p in prange(args[1].shape[0]):
        build_profile(p, *args)


@njit(cache=True)
def build_profiles_serial(*args):
    for p in range(args[1].shape[0]):
        build_profile(p, *args)


@njit(cache=True)
def level_pieces(row, n, scale, opencv, margin, thresholds, first, mass, piece_start, piece_level, piece_mass,
                 counts):
    """Record where the level changes (frame, level, Q there) and count run starts per threshold.

    Also fills the segment table: ``first[g]`` (−1 where never needed) and ``mass[g]``, Q at segment g's first
    frame, then the row's total. Segments whose values all stay below 0 (most of a row: background) cost one
    comparison: their level is 0 and their mass 0. Returns the number of pieces.
    """
    length = row.shape[0]
    # Rounding margin of any segment of this row: a segment whose widened value range holds no threshold (and
    # no 0) has one level for all its frames.
    slack = 0.0
    for x in row:
        slack = max(slack, abs(x))
    slack = 2.0 * margin * slack + 1e-300
    previous = -1
    pieces = 0
    total = 0.0
    start, start_known = 0, True  # the first frame of segment g, when already computed
    for g in range(length + 1):
        a, b = segment_values(row, g)
        mass[g] = total
        below_zero = max(a, b) + slack <= 0.0
        if below_zero and previous == 0:
            first[g] = -1
            start_known = False
            continue
        j0 = start if start_known else segment_start(g, n, scale, opencv)
        j1 = segment_start(g + 1, n, scale, opencv)
        start, start_known = j1, True
        first[g] = j0
        if j1 == j0:
            continue
        if below_zero:
            add_piece(piece_start, piece_level, piece_mass, pieces, j0, 0, total, previous, counts)
            pieces += 1
            previous = 0
            continue
        total += positive_mass(row, scale, opencv, g, j0, j1 - j0)
        level = threshold_level(min(a, b) - slack, thresholds)
        high = threshold_level(max(a, b) + slack, thresholds)
        if level == high:
            if level != previous:
                add_piece(piece_start, piece_level, piece_mass, pieces, j0, level, mass[g], previous, counts)
                pieces += 1
                previous = level
            continue
        low = level
        for frame in range(j0, j1):
            level = level_between(sample(row, frame, scale, opencv), thresholds, low, high)
            if level != previous:
                q = mass[g] + positive_mass(row, scale, opencv, g, j0, frame - j0)
                add_piece(piece_start, piece_level, piece_mass, pieces, frame, level, q, previous, counts)
                pieces += 1
                previous = level
    first[length + 1] = n
    mass[length + 1] = total
    return pieces


@njit(cache=True, inline="always")
def add_piece(piece_start, piece_level, piece_mass, index, frame, level, q, previous, counts):
    piece_start[index] = frame
    piece_level[index] = level
    piece_mass[index] = q
    for k in range(max(previous, 0), level):
        counts[k] += 1


@njit(cache=True)
def drop_lone_first_frame(piece_start, piece_level, pieces, n, counts):
    """The published quirk: a threshold whose only surviving frame is frame 0 yields no proposal."""
    level_0 = piece_level[0]
    level_1 = 0
    if n > 1:
        level_1 = piece_level[1] if pieces > 1 and piece_start[1] == 1 else level_0
    for k in range(level_0):
        if counts[k] == 1 and (n == 1 or level_1 <= k):
            counts[k] = 0


# ---- pass 2: runs, OIC scores, NMS ---------------------------------------------------------------------------


@njit(cache=True)
def score_and_suppress(p, num_frames, fps, duration, pair_video, pair_scores, num_thresholds, row_offsets,
                       segment_offsets, piece_offsets, rows, segment_first, segment_mass, piece_start, piece_level,
                       piece_mass, piece_count, proposal_offsets, opencv, oic_lambda, gamma, nms_iou, iou_offset,
                       time_by_duration, run_start, run_end, mass_start, mass_end, score, start_s, end_s, kept_order,
                       pair_kept):
    """Pass 2 (see the module docstring) for pair p: its proposals, and the kept ones in NMS order."""
    v = pair_video[p]
    n = num_frames[v]
    slots = proposal_offsets[p * num_thresholds : (p + 1) * num_thresholds + 1]
    first = segment_first[segment_offsets[p] : segment_offsets[p + 1]]
    mass = segment_mass[segment_offsets[p] : segment_offsets[p + 1]]
    base = piece_offsets[p]
    collect_runs(piece_start[base:], piece_level[base:], piece_mass[base:], piece_count[p], n,
                 mass[mass.shape[0] - 1], slots, run_start, run_end, mass_start, mass_end)
    row = rows[row_offsets[p] : row_offsets[p + 1]]
    scale = interpolation_scale(row.shape[0], n, opencv)
    for k in range(num_thresholds):
        for r in range(slots[k], slots[k + 1]):
            outer = outer_mean(row, scale, opencv, first, mass, run_start, run_end, mass_start, mass_end, r,
                               slots[k], slots[k + 1], n, oic_lambda)
            inner = (mass_end[r] - mass_start[r]) / (run_end[r] - run_start[r] + 1)
            score[r] = inner - outer + gamma * pair_scores[p]
            if time_by_duration:
                start_s[r] = run_start[r] / n * duration[v]
                end_s[r] = (run_end[r] + 1) / n * duration[v]
            else:
                start_s[r] = run_start[r] / fps[v]
                end_s[r] = (run_end[r] + 1) / fps[v]
    pair_kept[p] = threshold_nms(start_s, end_s, score, slots, nms_iou, iou_offset, kept_order)


@njit(cache=True, parallel=True)
def score_and_suppress_parallel(*args):
    for p in prange(args[3].shape[0]):
        score_and_suppress(p, *args)


@njit(cache=True)
def score_and_suppress_serial(*args):
    for p in range(args[3].shape[0]):
        score_and_suppress(p, *args)


@njit(cache=True)
def collect_runs(piece_start, piece_level, piece_mass, pieces, n, total_mass, slots, run_start, run_end,
                 mass_start, mass_end):
    """Write the runs of every threshold k (and Q at their bounds) into slots ``slots[k] ..``.

    Thresholds without slots (no run, or the ecm quirk dropped it) are skipped.
    """
    num_thresholds = slots.shape[0] - 1
    filled = np.zeros(num_thresholds, dtype=np.int64)
    previous = 0
    for i in range(pieces + 1):
        if i < pieces:
            frame, level, q = piece_start[i], np.int64(piece_level[i]), piece_mass[i]
        else:
            frame, level, q = n, np.int64(0), total_mass
        for k in range(previous, level):
            if slots[k + 1] > slots[k]:
                run_start[slots[k] + filled[k]] = frame
                mass_start[slots[k] + filled[k]] = q
        for k in range(level, previous):
            if slots[k + 1] > slots[k]:
                run_end[slots[k] + filled[k]] = frame - 1
                mass_end[slots[k] + filled[k]] = q
                filled[k] += 1
        previous = level


@njit(cache=True, inline="always")
def outer_mean(row, scale, opencv, first, mass, run_start, run_end, mass_start, mass_end, r, lo, hi, n, oic_lambda):
    """Mean of the thresholded row over run r's outer window (runs ``lo .. hi − 1`` share its threshold).

    The window is ``[max(0, int(s − λ·len)), s − 1] ∪ [e + 1, min(n, int(e + λ·len)) − 1]``.
    """
    s, e = run_start[r], run_end[r]
    reach = oic_lambda * (e - s + 1)
    outer_start = max(0, int(s - reach))
    outer_end = min(n, int(e + reach))
    count = (s - outer_start) + max(0, outer_end - (e + 1))
    if count == 0:
        return 0.0
    total = 0.0
    other = r - 1
    while other >= lo and run_end[other] >= outer_start:
        if run_start[other] >= outer_start:
            total += mass_end[other] - mass_start[other]
        else:
            total += mass_end[other] - prefix_mass(row, scale, opencv, first, mass, outer_start)
        other -= 1
    other = r + 1
    while other < hi and run_start[other] < outer_end:
        if run_end[other] < outer_end:
            total += mass_end[other] - mass_start[other]
        else:
            total += prefix_mass(row, scale, opencv, first, mass, outer_end) - mass_start[other]
        other += 1
    return total / count


@njit(cache=True)
def threshold_nms(start, end, score, slots, iou_threshold, iou_offset, kept_order):
    """Greedy NMS over one pair's proposals, ``slots[k] .. slots[k + 1] − 1`` those of threshold k: the CPU
    kernels' NMS, and the CUDA kernels' for pairs with too many proposals for its device bitmask.

    Writes the kept proposals, highest ranking key first (ties in index order), to ``kept_order[slots[0] ..]``
    and returns how many. A threshold's runs are disjoint and ordered, so the ones a kept segment can overlap
    (IoU above 0) are contiguous: found by a binary search per threshold, without sorting by start. The IoU and
    the keep rule are the reference's (``interval_iou``, ``suppresses``); ``iou_offset`` is
    ``PostParams.iou_offset``.
    """
    base = slots[0]
    m = slots[slots.shape[0] - 1] - base
    if m == 0:
        return 0
    order = ranking_order(score[base : base + m])
    rank = np.empty(m, dtype=np.int64)
    for ii in range(m):
        rank[order[ii]] = ii
    everything = iou_threshold <= 0.0  # then even disjoint segments suppress each other
    suppressed = np.zeros(m, dtype=np.bool_)
    kept = 0
    for ii in range(m):
        i = base + order[ii]
        if suppressed[i - base]:
            continue
        kept_order[base + kept] = i
        kept += 1
        s, e = start[i], end[i]
        slack = WINDOW_SLACK * (abs(s) + abs(e) + iou_offset)
        for k in range(slots.shape[0] - 1):
            t, stop = slots[k], slots[k + 1]
            if not everything:
                t = first_end_above(end, t, stop, s - iou_offset - slack)
            while t < stop and (everything or start[t] <= e + iou_offset + slack):
                if rank[t - base] > ii and not suppressed[t - base] \
                        and interval_iou(s, e, start[t], end[t], iou_offset) >= iou_threshold:
                    suppressed[t - base] = True
                t += 1
    return kept


@njit(cache=True, inline="always")
def first_end_above(end, lo, hi, bound):
    """The first t in lo .. hi − 1 with ``end[t] > bound`` (hi if none); ``end`` ascends there."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if end[mid] > bound:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def gather_detections(pair_video, pair_class, pair_base, pair_kept, kept_order, start_s, end_s, score):
    """Columns (video, class, start, end, score) of the kept proposals, by video, then score descending.

    Within a video, equal scores keep the (class, NMS) order, as ``make_detections`` orders them.
    """
    total = 0
    for p in range(pair_video.shape[0]):
        total += pair_kept[p]
    video, cls = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
    out_start, out_end, out_score = np.empty(total), np.empty(total), np.empty(total)
    filled = 0
    p = 0
    while p < pair_video.shape[0]:
        q = p
        count = 0
        while q < pair_video.shape[0] and pair_video[q] == pair_video[p]:
            count += pair_kept[q]
            q += 1
        index, owner, negated = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64), np.empty(count)
        j = 0
        for pair in range(p, q):
            for r in range(pair_kept[pair]):
                index[j], owner[j] = kept_order[pair_base[pair] + r], pair
                negated[j] = -score[index[j]]
                j += 1
        for o, j in enumerate(np.argsort(negated, kind="mergesort")):
            i, pair = index[j], owner[j]
            video[filled + o], cls[filled + o] = pair_video[pair], pair_class[pair]
            out_start[filled + o], out_end[filled + o], out_score[filled + o] = start_s[i], end_s[i], score[i]
        filled += count
        p = q
    return video, cls, out_start, out_end, out_score


@njit(cache=True)
def ranking_order(score):
    """Indices by ranking key descending, ties by index: one integer sort of (−key, index) packed in int64."""
    m = score.shape[0]
    packed = np.empty(m, dtype=np.int64)
    for i in range(m):
        key = np.floor(score[i] * RANK_SCALE + 0.5)
        if not abs(key) < 2.0**30:  # scores beyond ±1024: sort the keys themselves, stably
            return np.argsort(-np.floor(score * RANK_SCALE + 0.5), kind="mergesort")
        packed[i] = (-np.int64(key) << 32) | i
    packed.sort()
    return packed & 0xFFFFFFFF


@njit(cache=True, inline="always")
def interval_iou(start_a, end_a, start_b, end_b, one):
    """IoU of two intervals (``reference.interval_iou`` for one pair); ``one`` = ``PostParams.iou_offset``."""
    inter = max(0.0, min(end_a, end_b) - max(start_a, start_b) + one)
    union = (end_a - start_a + one) + (end_b - start_b + one) - inter
    return inter / union
