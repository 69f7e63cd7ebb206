"""The reference post-processing in plain numpy, step by step as the published code does it: the oracle.

Written for clarity, not speed: per class and threshold it zeroes a copy of the row, splits the surviving
positions into runs, averages each run and its outer window in Python, and runs a greedy NMS. The compiled
kernels must give the same detections (same segments, scores within 1e-5).

Each rule of docs/design.md §5 is one small function here, and the streaming tracker (``ecm_edge.runtime.online``)
uses the same ones: ``thresholded`` (step 4), ``outer_reach`` / ``outer_window`` / ``outer_mean`` / ``oic_score``
(step 5), ``interval_iou`` and ``suppresses`` (step 6). What the ``ecm`` mode changes is decided by
:class:`~ecm_edge.kernels.params.PostParams` (``iou_offset``, ``drops_lone_first_frame``, ``opencv_interpolation``).
"""

from __future__ import annotations

import numpy as np

from ecm_edge.kernels.detections import empty_detections, make_detections, ranking_key
from ecm_edge.kernels.inputs import VideoBatch
from ecm_edge.kernels.params import PostParams

FLOAT32_MAX = float(np.finfo(np.float32).max)


def localize_reference(batch: VideoBatch, params: PostParams) -> np.ndarray:
    """Detections of every video of a host batch (see ``ecm_edge.postprocess.localize_batch``)."""
    columns: list[tuple[int, int, float, float, float]] = []
    for v in range(batch.num_videos):
        cas = np.asarray(batch.cas[v, :, : batch.lengths[v]], dtype=np.float64)
        normalized = normalize_rows(cas)
        n = int(batch.num_frames[v])
        for c in np.flatnonzero(batch.video_scores[v] >= params.class_threshold):
            row = interpolate(normalized[c], n, params)
            start, end, score = class_proposals(row, float(batch.video_scores[v, c]), params)
            start_s, end_s = frames_to_seconds(start, end, n, batch.fps[v], batch.duration[v], params)
            for i in nms(start_s, end_s, score, params.nms_iou, params.iou_offset):
                columns.append((v, int(c), float(start_s[i]), float(end_s[i]), float(score[i])))
    if not columns:
        return empty_detections()
    video, cls, start, end, score = (np.array(col) for col in zip(*columns, strict=True))
    return make_detections(video, cls, start, end, score)


def normalize_rows(cas: np.ndarray) -> np.ndarray:
    """Step 1 of docs/design.md §5 along the last axis: ``(cas − relu(min)) / (relu(max) − relu(min))`` in float64,
    the divisor replaced by 1 when ≤ 0. The one implementation; the score sources and the plots use it too."""
    cas = np.asarray(cas, dtype=np.float64)
    return stretch_like(cas, cas)


def stretch_like(values: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """``values`` normalized with step 1's statistics of ``reference`` along ``axis`` (relu of its min and max;
    divisor 1 when ≤ 0). The streaming runtime normalizes new columns with those of its horizon this way."""
    high = np.maximum(reference.max(axis=axis, keepdims=True), 0.0)
    low = np.maximum(reference.min(axis=axis, keepdims=True), 0.0)
    delta = high - low
    delta[delta <= 0] = 1.0
    return (values - low) / delta


def interpolate(row: np.ndarray, num_frames: int, params: PostParams) -> np.ndarray:
    """Step 3 in the mode's arithmetic, as float64: :func:`interpolate_opencv` (``ecm``: ``cv2.resize``'s float32
    arithmetic) or :func:`interpolate_row` (``clean``: exact float64)."""
    if params.opencv_interpolation:
        return interpolate_opencv(row, num_frames).astype(np.float64)
    return interpolate_row(row, num_frames)


def interpolate_row(row: np.ndarray, num_frames: int) -> np.ndarray:
    """Linear interpolation of a length-T row to ``num_frames`` samples with half-pixel centers, exact in float64.

    Sample j reads position ``(j + 0.5) · T / num_frames − 0.5``, clamped to ``[0, T − 1]``: OpenCV's
    INTER_LINEAR geometry, each operation rounded once in float64 (OpenCV rounds to float32:
    :func:`interpolate_opencv`).
    """
    length = row.shape[0]
    src = (np.arange(num_frames) + 0.5) * (length / num_frames) - 0.5
    src = np.maximum(src, 0.0)
    left = src.astype(np.int64)
    frac = src - left
    at_end = left >= length - 1
    left[at_end] = length - 1
    frac[at_end] = 0.0
    right = np.minimum(left + 1, length - 1)
    return row[left] * (1.0 - frac) + row[right] * frac


def float32_row(row: np.ndarray) -> np.ndarray:
    """The normalized row as the ``ecm`` mode hands it to OpenCV's arithmetic: rounded to float32, saturating at
    ``±FLOAT32_MAX``. Only a negative value can get that far (normalized values are at most 1), when relu(max) is
    tiny against the row's negative values; saturated, it stays far below every threshold, where an infinity
    would turn into NaN next to a zero weight."""
    return np.clip(row, -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)


def opencv_scale(length: int, num_frames: int) -> float:
    """OpenCV's source step per output sample: ``1 / (num_frames / T)`` in float64 (not always ``T / num_frames``)."""
    return 1.0 / (num_frames / length)


def interpolate_opencv(row: np.ndarray, num_frames: int) -> np.ndarray:
    """``cv2.resize(row.astype(float32)[None], (num_frames, 1), interpolation=cv2.INTER_LINEAR)[0]``, bit for bit,
    without OpenCV: the ``ecm`` mode's step 3 (the published code resizes a float32 CAS).

    OpenCV's arithmetic for a one-row float32 image, the generic INTER_LINEAR path of ``cv::hal::resize``
    (``modules/imgproc/src/resize.cpp``; checked bit for bit against ``cv2.resize`` in
    tests/kernels/test_kernels_ecm.py; a column image ``[T, 1]`` or many rows at once take other paths, whose last
    bits differ on some frames):
    with ``scale`` from :func:`opencv_scale`, sample j reads ``x = float32((j + 0.5) · scale − 0.5)`` (float64 arithmetic, rounded once
    to float32), ``k = ⌊x⌋``, ``f = x − k`` (exact). ``k < 0`` gives ``k = 0, f = 0``; ``k ≥ T − 1`` gives
    ``row[T − 1]``; otherwise the value is
    ``float32(float32(row[k] · float32(1 − f)) + float32(row[k + 1] · f))``, every operation rounded to float32
    on its own (no fused multiply-add). Downsampling uses the same formula.
    ``row`` is rounded by :func:`float32_row` first. Returns float32.
    """
    values = float32_row(row)
    length = values.shape[0]
    position = ((np.arange(num_frames) + 0.5) * opencv_scale(length, num_frames) - 0.5).astype(np.float32)
    whole = np.floor(position)
    frac = position - whole
    left = whole.astype(np.int64)
    before = left < 0
    left[before], frac[before] = 0, 0.0
    after = left >= length - 1
    right = np.minimum(left + 1, length - 1)
    out = values[left] * (np.float32(1.0) - frac) + values[right] * frac
    out[after] = values[length - 1]
    return out


def class_proposals(row: np.ndarray, video_score: float, params: PostParams) -> tuple[np.ndarray, ...]:
    """Runs of every activation threshold as (start frame, end frame inclusive, OIC score), threshold-major."""
    starts: list[int] = []
    ends: list[int] = []
    scores: list[float] = []
    for theta in params.act_thresholds:
        row_theta = thresholded(row, theta)
        positions = np.flatnonzero(row_theta > 0)
        if positions.size == 0:
            continue
        if params.drops_lone_first_frame and not positions.any():
            # The published code tests `positions.any()`: a lone surviving index 0 reads as "nothing".
            continue
        for run in np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1):
            s, e = int(run[0]), int(run[-1])
            starts.append(s)
            ends.append(e)
            scores.append(run_score(row_theta, s, e, video_score, params))
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), np.array(scores, dtype=np.float64)


def thresholded(values: np.ndarray, theta: float) -> np.ndarray:
    """Step 4: the values below θ zeroed (a frame is in a run at θ when its value is ``≥ θ`` and ``> 0``)."""
    return np.where(values >= theta, values, 0.0)


def run_score(row_theta: np.ndarray, s: int, e: int, video_score: float, params: PostParams) -> float:
    """The OIC score of run ``[s, e]`` of a whole thresholded row (its outer window clipped to the row)."""
    inner = float(np.mean(row_theta[s : e + 1]))
    outer = outer_mean(row_theta[outer_window(s, e, params.oic_lambda, 0, row_theta.shape[0])])
    return oic_score(inner, outer, video_score, params.gamma)


def outer_reach(s: int, e: int, oic_lambda: float) -> tuple[int, int]:
    """Unclipped bounds of the outer window of run ``[s, e]``: ``int(s − λ·len)`` and ``int(e + λ·len)``
    (exclusive), truncated by Python ``int`` as the published code does (so the right side is one shorter)."""
    length = e - s + 1
    return int(s - oic_lambda * length), int(e + oic_lambda * length)


def outer_window(s: int, e: int, oic_lambda: float, lo: int, hi: int) -> np.ndarray:
    """Positions of run ``[s, e]``'s outer window clipped to ``[lo, hi)``:
    ``[max(lo, int(s − λ·len)), s − 1] ∪ [e + 1, min(hi, int(e + λ·len)) − 1]``."""
    left, right = outer_reach(s, e, oic_lambda)
    return np.concatenate([np.arange(max(lo, left), s), np.arange(e + 1, min(hi, right))])


def outer_mean(values: np.ndarray) -> float:
    """Mean of the thresholded values of an outer window; 0 when the window is empty."""
    return float(np.mean(values)) if values.size else 0.0


def oic_score(inner: float, outer: float, video_score: float, gamma: float) -> float:
    """Step 5's segment score: inner mean − outer mean + γ · video score."""
    return inner - outer + gamma * video_score


def frames_to_seconds(start: np.ndarray, end: np.ndarray, num_frames: int, fps: float, duration: float,
                      params: PostParams) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of inclusive frame runs: ``[s, e + 1) / fps`` or ``[s, e + 1) / num_frames · duration``."""
    if params.time_by_duration:
        return start / num_frames * duration, (end + 1) / num_frames * duration
    return start / fps, (end + 1) / fps


def nms(start: np.ndarray, end: np.ndarray, score: np.ndarray, iou_threshold: float, iou_offset: float) -> list[int]:
    """Greedy NMS: indices kept, highest score first; ties keep the given (threshold, start) order.

    Scores are compared by :func:`ranking_key` (rounded to 2⁻²⁰), so near-ties count as ties.
    """
    order = np.argsort(-ranking_key(score), kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iou = interval_iou(start[best], end[best], start[rest], end[rest], iou_offset)
        order = rest[~suppresses(iou, iou_threshold)]
    return keep


def interval_iou(start: float, end: float, starts: np.ndarray, ends: np.ndarray, offset: float) -> np.ndarray:
    """IoU of one interval with many; ``offset`` (``PostParams.iou_offset``) is added to every length and overlap:
    1 for the published pixel-box convention (``end − start + 1``), 0 for the true IoU."""
    inter = np.maximum(0.0, np.minimum(end, ends) - np.maximum(start, starts) + offset)
    union = (end - start + offset) + (ends - starts + offset) - inter
    return inter / union


def suppresses(iou: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Step 6's rule: a kept segment removes another whose IoU with it reaches the threshold (kept below it)."""
    return iou >= iou_threshold
