"""The one output type of all post-processing kernels: a structured array of segments, and how two of them are compared."""

from __future__ import annotations

import numpy as np

DETECTION_DTYPE = np.dtype([("video", "<i4"), ("cls", "<i4"), ("start", "<f8"), ("end", "<f8"), ("score", "<f8")])

# NMS visits proposals by score rounded to a multiple of 2⁻²⁰ (about 1e-6), highest first, equal rounded scores in
# proposal order. The kernels sum the same values in different orders, so their scores differ in the last bits;
# rounding makes near-ties (which the published code orders by those last bits) ties, broken the same way.
RANK_SCALE = 2.0**20


def ranking_key(score: np.ndarray) -> np.ndarray:
    """The NMS ranking key of scores: ``floor(score · 2²⁰ + 0.5)`` (exact: a power-of-two scale)."""
    return np.floor(np.asarray(score) * RANK_SCALE + 0.5)


def empty_detections() -> np.ndarray:
    return np.zeros(0, dtype=DETECTION_DTYPE)


def make_detections(video: np.ndarray, cls: np.ndarray, start: np.ndarray, end: np.ndarray,
                    score: np.ndarray) -> np.ndarray:
    """Pack columns into a detection array, ordered by video, then by score descending.

    The sort is stable, so segments of equal score keep the order they are given in; all kernels hand them
    over by class, then in their NMS order, which makes the output order identical across kernels.
    """
    return sort_detections(pack_detections(video, cls, start, end, score))


def pack_detections(video: np.ndarray, cls: np.ndarray, start: np.ndarray, end: np.ndarray,
                    score: np.ndarray) -> np.ndarray:
    """Pack columns into a detection array as given (for columns already in ``make_detections``'s order)."""
    dets = np.empty(len(video), dtype=DETECTION_DTYPE)
    dets["video"], dets["cls"], dets["start"], dets["end"], dets["score"] = video, cls, start, end, score
    return dets


def sort_detections(dets: np.ndarray) -> np.ndarray:
    """Stable sort by video ascending, then score descending."""
    order = np.lexsort((-dets["score"], dets["video"]))
    return dets[order]


def compare_detections(actual: np.ndarray, expected: np.ndarray, score_tol: float = 1e-5,
                       time_tol: float = 1e-9) -> str | None:
    """None when both hold the same segments (video, class, bounds; scores within ``score_tol``).

    Otherwise a sentence naming the first difference. Segments are matched after sorting both arrays by
    (video, class, start, end), so scores that tie up to rounding may be ordered differently.
    """
    if len(actual) != len(expected):
        return f"{len(actual)} detections instead of {len(expected)}{_count_hint(actual, expected)}"
    a, b = _canonical(actual), _canonical(expected)
    for name in ("video", "cls"):
        bad = np.flatnonzero(a[name] != b[name])
        if bad.size:
            return f"detection {bad[0]}: {name} {a[name][bad[0]]} instead of {b[name][bad[0]]}"
    for name, tol in (("start", time_tol), ("end", time_tol), ("score", score_tol)):
        diff = np.abs(a[name] - b[name])
        bad = np.flatnonzero(~(diff <= tol))
        if bad.size:
            i = bad[0]
            return (f"video {a['video'][i]} class {a['cls'][i]}: {name} {a[name][i]!r} instead of {b[name][i]!r} "
                    f"(max difference {diff.max():.3g} > {tol:g})")
    return None


def _canonical(dets: np.ndarray) -> np.ndarray:
    return dets[np.lexsort((dets["end"], dets["start"], dets["cls"], dets["video"]))]


def _count_hint(actual: np.ndarray, expected: np.ndarray) -> str:
    videos = np.union1d(actual["video"], expected["video"])
    for v in videos:
        na, nb = int(np.sum(actual["video"] == v)), int(np.sum(expected["video"] == v))
        if na != nb:
            return f" (first difference: video {v} has {na} instead of {nb})"
    return ""
