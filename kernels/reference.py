"""The reference post-processing in plain numpy, step by step as the published code does it: the oracle.

Written for clarity, not speed: per class and threshold it zeroes a copy of the row, splits the surviving
positions into runs, averages each run and its outer window in Python, and runs a greedy NMS. The compiled
backends must give the same detections (same segments, scores within 1e-5).
"""

from __future__ import annotations

import numpy as np

from ecm_edge.kernels.detections import empty_detections, make_detections, ranking_key
from ecm_edge.kernels.params import PostParams
from ecm_edge.kernels.validate import VideoBatch


def localize_reference(batch: VideoBatch, params: PostParams) -> np.ndarray:
    """Detections of every video of a host batch (see ``ecm_edge.postprocess.localize_batch``)."""
    columns: list[tuple[int, int, float, float, float]] = []
    for v in range(batch.num_videos):
        cas = np.asarray(batch.cas[v, :, : batch.lengths[v]], dtype=np.float64)
        normalized = normalize_rows(cas)
        n = int(batch.num_frames[v])
        for c in np.flatnonzero(batch.video_scores[v] >= params.class_threshold):
            row = interpolate_row(normalized[c], n)
            start, end, score = class_proposals(row, float(batch.video_scores[v, c]), params)
            start_s, end_s = frames_to_seconds(start, end, n, batch.fps[v], batch.duration[v], params)
            for i in nms(start_s, end_s, score, params.nms_iou, pixel_convention=params.ecm_mode):
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


def interpolate_row(row: np.ndarray, num_frames: int) -> np.ndarray:
    """Linear interpolation of a length-T row to ``num_frames`` samples with half-pixel centers.

    Sample j reads position ``(j + 0.5) · T / num_frames − 0.5``, clamped to ``[0, T − 1]``: OpenCV's
    INTER_LINEAR geometry, computed exactly in float64 (OpenCV rounds the position to float32).
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


def class_proposals(row: np.ndarray, video_score: float, params: PostParams) -> tuple[np.ndarray, ...]:
    """Runs of every activation threshold as (start frame, end frame inclusive, OIC score), threshold-major."""
    n = row.shape[0]
    starts: list[int] = []
    ends: list[int] = []
    scores: list[float] = []
    for theta in params.act_thresholds:
        row_theta = row.copy()
        row_theta[row_theta < theta] = 0.0
        positions = np.flatnonzero(row_theta > 0)
        if positions.size == 0:
            continue
        if params.ecm_mode and not positions.any():
            # The published code tests `positions.any()`: a lone surviving index 0 reads as "nothing".
            continue
        for run in np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1):
            s, e = int(run[0]), int(run[-1])
            starts.append(s)
            ends.append(e)
            scores.append(oic_score(row_theta, s, e, n, video_score, params))
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64), np.array(scores, dtype=np.float64)


def oic_score(row_theta: np.ndarray, s: int, e: int, n: int, video_score: float, params: PostParams) -> float:
    """Inner mean minus outer mean of a run on the thresholded row, plus γ times the video score.

    The outer window is ``[max(0, int(s − λ·len)), s − 1] ∪ [e + 1, min(n, int(e + λ·len)) − 1]``.
    """
    length = e - s + 1
    inner = float(np.mean(row_theta[s : e + 1]))
    outer_start = max(0, int(s - params.oic_lambda * length))
    outer_end = min(n, int(e + params.oic_lambda * length))
    outer_positions = list(range(outer_start, s)) + list(range(e + 1, outer_end))
    outer = float(np.mean(row_theta[outer_positions])) if outer_positions else 0.0
    return inner - outer + params.gamma * video_score


def frames_to_seconds(start: np.ndarray, end: np.ndarray, num_frames: int, fps: float, duration: float,
                      params: PostParams) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of inclusive frame runs: ``[s, e + 1) / fps`` or ``[s, e + 1) / num_frames · duration``."""
    if params.time_by_duration:
        return start / num_frames * duration, (end + 1) / num_frames * duration
    return start / fps, (end + 1) / fps


def nms(start: np.ndarray, end: np.ndarray, score: np.ndarray, iou_threshold: float,
        pixel_convention: bool) -> list[int]:
    """Greedy NMS: indices kept, highest score first; ties keep the given (threshold, start) order.

    Scores are compared by :func:`ranking_key` (rounded to 2⁻²⁰), so near-ties count as ties.
    """
    order = np.argsort(-ranking_key(score), kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iou = interval_iou(start[best], end[best], start[rest], end[rest], pixel_convention)
        order = rest[iou < iou_threshold]
    return keep


def interval_iou(start: float, end: float, starts: np.ndarray, ends: np.ndarray,
                 pixel_convention: bool) -> np.ndarray:
    """IoU of one interval with many; ``pixel_convention`` counts ``end − start + 1`` as the published code."""
    one = 1.0 if pixel_convention else 0.0
    inter = np.maximum(0.0, np.minimum(end, ends) - np.maximum(start, starts) + one)
    union = (end - start + one) + (ends - starts + one) - inter
    return inter / union
