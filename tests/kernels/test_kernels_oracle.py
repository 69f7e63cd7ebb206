"""An oracle for the post-processing that shares no code with ``ecm_edge.kernels``, and its own fixed-value tests.

:func:`oracle_detections` follows docs/design.md §5 line by line, in the plainest Python: the interpolation of the
``ecm`` mode is ``cv2.resize`` itself (what the published code calls), that of ``clean`` mode the float64 formula
of the contract written out per frame. The kernel tests (tests/kernels/test_kernels_agreement.py) compare the
numpy reference against it, and the other kernels against the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pytest

from ecm_edge.kernels import DETECTION_DTYPE, PostParams, compare_detections

RANK_SCALE = 2.0**20  # NMS ranks scores rounded to multiples of 2⁻²⁰ (the contract's ranking key)


def oracle_detections(cas: Any, video_scores: Any, *, num_frames: Any, params: PostParams, fps: Any = None,
                      duration: Any = None, lengths: Any = None, **_: Any) -> np.ndarray:
    """Detections of ``cas`` (``[N, C, Tmax]`` with ``lengths``, or a list of ``[C, T_i]``), as
    ``ecm_edge.postprocess.localize_batch`` returns them."""
    rows, lengths = _padded(cas, lengths)
    scores = np.asarray(video_scores, dtype=np.float64)
    videos = rows.shape[0]
    frames = np.broadcast_to(np.asarray(num_frames), (videos,))
    found: list[tuple[int, int, float, float, float]] = []
    for v in range(videos):
        n = int(frames[v])
        for c in range(rows.shape[1]):
            if scores[v, c] < params.class_threshold:
                continue
            row = oracle_upsample(oracle_normalize(rows[v, c, : lengths[v]]), n, params.mode)
            segments = [(*_seconds(s, e, n, v, fps, duration, params), score)
                        for s, e, score in oracle_proposals(row, float(scores[v, c]), params)]
            found += [(v, c, start, end, score) for start, end, score in oracle_nms(segments, params)]
    dets = np.zeros(len(found), dtype=DETECTION_DTYPE)
    for i, values in enumerate(found):
        dets[i] = values
    return dets[np.lexsort((-dets["score"], dets["video"]))]


def oracle_normalize(row: np.ndarray) -> np.ndarray:
    """``(x − relu(min)) / (relu(max) − relu(min))`` in float64, divisor 1 when ≤ 0."""
    x = np.asarray(row, dtype=np.float64)
    low, high = max(float(x.min()), 0.0), max(float(x.max()), 0.0)
    delta = high - low if high - low > 0 else 1.0
    return (x - low) / delta


def oracle_upsample(row: np.ndarray, n: int, mode: str) -> np.ndarray:
    """``ecm``: OpenCV on the float32 row (saturated at ±float32 max, as the contract says, where a tiny relu(max)
    stretches negative values beyond float32); ``clean``: sample j reads x = max((j + 0.5) · T / n − 0.5, 0),
    value ``row[k] · (1 − f) + row[k + 1] · f`` (``row[T − 1]`` from k = T − 1 on)."""
    if mode == "ecm":
        largest = np.finfo(np.float32).max
        row32 = np.maximum(row, -largest).astype(np.float32)
        return cv2.resize(row32[None], (n, 1), interpolation=cv2.INTER_LINEAR)[0].astype(np.float64)
    length = len(row)
    out = np.empty(n)
    for j in range(n):
        x = max((j + 0.5) * (length / n) - 0.5, 0.0)
        k = int(x)
        out[j] = row[length - 1] if k >= length - 1 else row[k] * (1.0 - (x - k)) + row[k + 1] * (x - k)
    return out


def oracle_proposals(row: np.ndarray, video_score: float, params: PostParams) -> list[tuple[int, int, float]]:
    """(start, end inclusive, OIC score) of every run of every threshold, threshold by threshold."""
    proposals = []
    n = len(row)
    for theta in params.act_thresholds:
        kept = row.copy()
        kept[kept < theta] = 0.0
        positions = [int(p) for p in np.flatnonzero(kept > 0)]
        if params.mode == "ecm" and positions == [0]:
            continue  # the published code's `positions.any()`: only index 0 left reads as nothing
        runs: list[list[int]] = []
        for p in positions:
            if runs and p == runs[-1][-1] + 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        for run in runs:
            s, e, length = run[0], run[-1], len(run)
            inner = float(np.mean(kept[s : e + 1]))
            outer_positions = list(range(max(0, int(s - params.oic_lambda * length)), s))
            outer_positions += list(range(e + 1, min(n, int(e + params.oic_lambda * length))))
            outer = float(np.mean(kept[outer_positions])) if outer_positions else 0.0
            proposals.append((s, e, inner - outer + params.gamma * video_score))
    return proposals


def oracle_nms(segments: list[tuple[float, float, float]], params: PostParams) -> list[tuple[float, float, float]]:
    """Greedy NMS of one class's (start s, end s, score): visited by score rounded to 2⁻²⁰, highest first, ties in
    the given order; a segment is kept when its IoU with every kept one is below ``nms_iou`` (``ecm``: lengths
    and overlaps + 1, the published pixel-box convention on seconds)."""
    one = 1.0 if params.mode == "ecm" else 0.0
    order = sorted(range(len(segments)), key=lambda i: -math.floor(segments[i][2] * RANK_SCALE + 0.5))
    kept: list[int] = []
    for i in order:
        if all(_iou(segments[i], segments[k], one) < params.nms_iou for k in kept):
            kept.append(i)
    return [segments[i] for i in kept]


def _iou(a: tuple[float, ...], b: tuple[float, ...], one: float) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]) + one)
    return inter / ((a[1] - a[0] + one) + (b[1] - b[0] + one) - inter)


def _seconds(s: int, e: int, n: int, v: int, fps: Any, duration: Any, params: PostParams) -> tuple[float, float]:
    if params.time_base == "duration":
        return s / n * _of_video(duration, v), (e + 1) / n * _of_video(duration, v)
    return s / _of_video(fps, v), (e + 1) / _of_video(fps, v)


def _of_video(value: Any, v: int) -> float:
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else float(array[v])


def _padded(cas: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(cas, (list, tuple)):
        t_max = max(np.shape(x)[1] for x in cas)
        rows = np.zeros((len(cas), np.shape(cas[0])[0], t_max), dtype=np.result_type(*cas))
        for i, x in enumerate(cas):
            rows[i, :, : np.shape(x)[1]] = x
        return rows, np.array([np.shape(x)[1] for x in cas])
    rows = np.asarray(cas)
    return rows, np.broadcast_to(np.asarray(rows.shape[2] if lengths is None else lengths), (rows.shape[0],))


# ---- the oracle's own tests: values worked out by hand --------------------------------------------------------


def test_oracle_normalizes_interpolates_and_scores_by_hand():
    # Row [-1, 1, 1, -1] → normalized as is (relu(min) = 0, Δ = 1); 4 → 8 frames (clean): positions
    # −0.25 (clamped), 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25 → values −1, −0.5, 0.5, 1, 1, 0.5, −0.5, −1.
    up = oracle_upsample(oracle_normalize(np.array([-1.0, 1, 1, -1])), 8, "clean")
    assert up.tolist() == [-1.0, -0.5, 0.5, 1.0, 1.0, 0.5, -0.5, -1.0]
    params = PostParams(mode="clean", act_thresholds=[0.5], oic_lambda=0.5, gamma=0.5)
    # One run [2, 5] (length 4): inner 0.75; outer [int(2 − 2), 1] ∪ [6, int(5 + 2) − 1] = frames 0, 1, 6 (all
    # zeroed, below 0.5): outer 0; score 0.75 + 0.5 · 0.4.
    assert oracle_proposals(up, 0.4, params) == [(2, 5, pytest.approx(0.95))]
    dets = oracle_detections(np.array([[[-1.0, 1, 1, -1]]]), [[0.4]], num_frames=8, fps=2.0, params=params)
    assert dets.tolist() == [(0, 0, 1.0, 3.0, pytest.approx(0.95))]


def test_oracle_nms_and_the_ecm_conventions_by_hand():
    params = PostParams(mode="ecm", nms_iou=0.5)
    # [0, 1] and [1.5, 2.5] s: disjoint, but with +1 the overlap is 0.5 of a union 3.5 (IoU 1/7 < 0.5: kept);
    # [0.2, 1.2] overlaps [0, 1] by 1.8 of 2.2 (+1): IoU 0.82, suppressed by the higher-ranked [0, 1].
    segments = [(0.0, 1.0, 0.9), (1.5, 2.5, 0.5), (0.2, 1.2, 0.8)]
    assert oracle_nms(segments, params) == [(0.0, 1.0, 0.9), (1.5, 2.5, 0.5)]
    near_tie = [(0.0, 1.0, 0.5), (0.2, 1.2, 0.5 + 1e-9)]  # equal after rounding to 2⁻²⁰: the first one wins
    assert oracle_nms(near_tie, params) == [(0.0, 1.0, 0.5)]
    lone_first = np.array([1.0, 0, 0, 0])  # only frame 0 survives: the published code yields nothing
    assert oracle_proposals(lone_first, 0.5, params.replace(act_thresholds=[0.5])) == []
    assert oracle_proposals(lone_first, 0.5, params.replace(mode="clean", act_thresholds=[0.5])) == [
        (0, 0, pytest.approx(1.0 + 0.15 * 0.5))]


def test_oracle_ecm_interpolation_is_half_pixel_linear_with_clamped_edges():
    """3 → 7 samples by hand: positions (j + 0.5) · 3/7 − 0.5 = −0.29, 0.14, 0.57, 1, 1.43, 1.86, 2.29; the first
    reads row[0], the last row[2] (edges clamped), the rest interpolate their two neighbours."""
    row = np.array([0.0, 0.3, 1.0])
    expected = [0.0, 0.3 / 7, 0.3 * 4 / 7, 0.3, 0.3 * 4 / 7 + 3 / 7, 0.3 / 7 + 6 / 7, 1.0]
    assert oracle_upsample(row, 7, "ecm").tolist() == pytest.approx(expected, abs=1e-6)


def test_oracle_and_comparison_see_a_changed_segment():
    cas = np.array([[[-1.0, 2, 3, -1, -1, 2, -1]]])
    params = PostParams(mode="clean")
    dets = oracle_detections(cas, [[0.9]], num_frames=14, fps=1.0, params=params)
    assert len(dets) == 2  # the two bumps, at frames 2–5 and 10–11
    moved = dets.copy()
    moved["end"][0] += 1.0
    assert compare_detections(moved, dets) is not None


__all__: Sequence[str] = ["oracle_detections"]
