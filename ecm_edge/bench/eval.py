"""Benchmark part ``eval``: the vectorized mAP evaluator against a per-detection loop on THUMOS14's test set.

Ground truth: the real THUMOS14 test annotations (210 videos, 3311 segments, 20 classes) when found
(``$ECM_EDGE_THUMOS14`` or ``../shared/data/thumos14`` beside the source tree), else a seeded synthetic ground
truth of the same size. Detections (100k; 10k with ``--quick``): jittered copies of ground-truth segments,
some with a wrong class, plus background detections, with scores on a coarse grid so that ties occur.

The baseline is the ActivityNet evaluator's algorithm written as a plain Python loop (per class, per detection,
per threshold); both run in the same process on the same input, and their per-class APs must agree to 1e-6.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.bench import BenchSection
from ecm_edge.data.annotations import Annotations, VideoAnnotation, load_activitynet_json, load_ambiguous
from ecm_edge.evaluation import AMBIGUOUS_FILE_NAME, evaluate_detections
from ecm_edge.timing import time_call

DATA_ENV = "ECM_EDGE_THUMOS14"  # folder with gt.json (and reduced/Ambiguous_test.txt)
NUM_DETECTIONS = 100_000
QUICK_DETECTIONS = 10_000
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
TEST_VIDEOS, TEST_SEGMENTS, NUM_CLASSES = 210, 3311, 20  # THUMOS14 test set
WRONG_CLASS = 0.3  # share of jittered detections given another class
BACKGROUND = 0.2  # share of detections placed anywhere in the video
SCORE_LEVELS = 1000  # scores are multiples of 1 / SCORE_LEVELS (ties happen, as with real models)
AGREEMENT = 1e-6
SEED = 0


def run(quick: bool = False) -> BenchSection:
    gt, ambiguous, source = thumos14_test_ground_truth()
    count = QUICK_DETECTIONS if quick else NUM_DETECTIONS
    results = synthetic_detections(gt, count, np.random.default_rng(SEED))
    repeat = 3 if quick else 5

    loop = loop_evaluate(results, gt, THRESHOLDS)
    loop_wall, loop_cpu = _timed(lambda: loop_evaluate(results, gt, THRESHOLDS), repeat=1)
    vectorized = evaluate_detections(results, gt, THRESHOLDS)
    vec_wall, vec_cpu = _timed(lambda: evaluate_detections(results, gt, THRESHOLDS), repeat)
    rows: list[list[object]] = [
        ["loop (baseline)", "activitynet", loop_wall, loop_cpu, 1.0, 100 * _mean_map(loop), "—"],
        ["vectorized", "activitynet", vec_wall, vec_cpu, loop_cpu / vec_cpu, 100 * vectorized.average,
         _agreement(max_ap_difference(vectorized.per_class, loop))],
    ]
    notes = [f"ground truth: {source}; {count:,} detections, IoU {THRESHOLDS[0]}:{THRESHOLDS[-1]}:0.1; input: "
             f"the results mapping as read from JSON (validation included); median of {repeat} runs, the loop once",
             "speedup = loop CPU seconds / vectorized CPU seconds, same process and input (CPU time, because "
             "wall time on a shared machine also counts the other processes' turns)"]
    if ambiguous is not None:
        kept = evaluate_detections(results, gt, THRESHOLDS, ambiguous=ambiguous)
        loop_kept = loop_evaluate(results, gt, THRESHOLDS, ambiguous)
        wall, cpu = _timed(lambda: evaluate_detections(results, gt, THRESHOLDS, ambiguous=ambiguous), repeat)
        rows.append(["vectorized", "thumos14", wall, cpu, loop_cpu / cpu, 100 * kept.average,
                     _agreement(max_ap_difference(kept.per_class, loop_kept))])
        notes.append(f"thumos14 protocol: {kept.num_ambiguous_removed:,} detections overlapping "
                     f"{AMBIGUOUS_FILE_NAME} segments removed before scoring")
    return BenchSection("Evaluation: detection mAP, vectorized vs loop",
                        ["implementation", "protocol", "wall s", "CPU s", "speedup", "average mAP (%)", "agrees"],
                        rows, notes)


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``repeat`` calls."""
    cpu: list[float] = []

    def measured() -> None:
        began = time.process_time()
        fn()
        cpu.append(time.process_time() - began)

    wall = time_call(measured, repeat=repeat, warmup=0)
    return float(statistics.median(wall)), statistics.median(cpu)


def _agreement(diff: float) -> str:
    return f"yes (max ΔAP {diff:.1e})" if diff <= AGREEMENT else f"NO (max ΔAP {diff:.1e})"


def _mean_map(per_class: Mapping[str, Sequence[float]]) -> float:
    return float(np.mean(list(per_class.values())))


def max_ap_difference(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]]) -> float:
    if set(a) != set(b):
        return float("inf")
    return max((float(np.max(np.abs(np.subtract(a[k], b[k])))) for k in a), default=0.0)


# ---------------------------------------------------------------------------------------------------- inputs


def thumos14_test_ground_truth() -> tuple[Annotations, dict[str, np.ndarray] | None, str]:
    """(test ground truth, ambiguous spans or None, where it came from)."""
    folder = _find_thumos14_dir()
    if folder is not None:
        gt = load_activitynet_json(folder / "gt.json").subset("test")
        spans = next((load_ambiguous(p) for p in (folder / AMBIGUOUS_FILE_NAME,
                                                  folder / "reduced" / AMBIGUOUS_FILE_NAME) if p.is_file()), None)
        return gt, spans, f"THUMOS14 test annotations ({len(gt.videos)} videos, {gt.num_segments} segments)"
    return (synthetic_ground_truth(np.random.default_rng(SEED)), None,
            f"synthetic, THUMOS14 test size ({TEST_VIDEOS} videos, {TEST_SEGMENTS} segments)")


def _find_thumos14_dir() -> Path | None:
    candidates = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thumos14")
    return next((folder for folder in candidates if (folder / "gt.json").is_file()), None)


def synthetic_ground_truth(rng: np.random.Generator) -> Annotations:
    """210 videos of 1–3 classes, 3311 segments of 1–10 s placed one after another with gaps."""
    classes = [f"class{c:02d}" for c in range(NUM_CLASSES)]
    per_video = rng.multinomial(TEST_SEGMENTS - TEST_VIDEOS, np.full(TEST_VIDEOS, 1 / TEST_VIDEOS)) + 1
    videos = {}
    for v, count in enumerate(per_video):
        own = rng.choice(NUM_CLASSES, size=int(rng.integers(1, 4)), replace=False)
        lengths = rng.uniform(1.0, 10.0, count)
        starts = np.cumsum(rng.uniform(2.0, 30.0, count) + np.r_[0.0, lengths[:-1]])
        vid = f"video_test_{v:07d}"
        videos[vid] = VideoAnnotation(vid, "test", np.stack([starts, starts + lengths], axis=1),
                                      [classes[c] for c in rng.choice(own, size=count)])
    return Annotations(videos, classes)


def synthetic_detections(gt: Annotations, count: int, rng: np.random.Generator) -> dict[str, list[dict[str, Any]]]:
    """Jittered ground-truth copies (some with a wrong class) and background detections, as a results mapping."""
    segments = [(vid, s, e, lab) for vid, v in gt.videos.items()
                for (s, e), lab in zip(v.segments, v.labels, strict=True)]
    span = {vid: float(v.segments[:, 1].max(initial=60.0)) for vid, v in gt.videos.items()}
    pick = rng.integers(len(segments), size=count)
    background = rng.random(count) < BACKGROUND
    wrong = rng.random(count) < WRONG_CLASS
    results: dict[str, list[dict[str, Any]]] = {vid: [] for vid in gt.videos}
    for i in range(count):
        vid, s, e, label = segments[pick[i]]
        length = (e - s) * rng.uniform(0.3, 2.0)
        start = rng.uniform(0.0, span[vid]) if background[i] else max(0.0, s + rng.normal(0.0, 0.3 * (e - s) + 0.5))
        if wrong[i]:
            label = gt.class_names[int(rng.integers(len(gt.class_names)))]
        score = int(rng.integers(1, SCORE_LEVELS + 1)) / SCORE_LEVELS
        results[vid].append({"label": label, "score": score, "segment": [start, start + length]})
    return results


# ---------------------------------------------------------------------------------------------------- baseline


def loop_evaluate(results: Mapping[str, Sequence[Mapping[str, Any]]], gt: Annotations, thresholds: Sequence[float],
                  ambiguous: Mapping[str, np.ndarray] | None = None) -> dict[str, list[float]]:
    """Per-class AP the way ActivityNet's evaluator computes it: a loop per class, detection and threshold."""
    truth: dict[str, dict[str, list[tuple[int, float, float]]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, int] = defaultdict(int)
    for vid, video in gt.videos.items():
        for (s, e), label in zip(video.segments.tolist(), video.labels, strict=True):
            truth[label][vid].append((counts[label], s, e))
            counts[label] += 1
    detections: dict[str, list[tuple[str, float, float, float]]] = defaultdict(list)
    for vid, dets in results.items():
        spans = [] if ambiguous is None else np.asarray(ambiguous.get(vid, ()), dtype=float).reshape(-1, 2).tolist()
        for d in dets:
            s, e = float(d["segment"][0]), float(d["segment"][1])
            if not any(min(e, a1) - max(s, a0) > 0 for a0, a1 in spans):
                detections[d["label"]].append((vid, s, e, float(d["score"])))
    return {label: _loop_class_ap(truth[label], counts[label], detections[label], thresholds)
            for label in gt.class_names if counts[label]}


def _loop_class_ap(truth: Mapping[str, list[tuple[int, float, float]]], npos: int,
                   detections: list[tuple[str, float, float, float]], thresholds: Sequence[float]) -> list[float]:
    order = sorted(range(len(detections)), key=lambda i: -detections[i][3])  # stable: ties keep input order
    locked: list[set[int]] = [set() for _ in thresholds]
    hits = [[0] * len(order) for _ in thresholds]
    for rank, i in enumerate(order):
        vid, start, end, _ = detections[i]
        candidates = []
        for j, gs, ge in truth.get(vid, []):
            inter = max(0.0, min(end, ge) - max(start, gs))
            union = (end - start) + (ge - gs) - inter
            candidates.append((inter / union if union > 0 else 0.0, j))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        for t, threshold in enumerate(thresholds):
            for iou, j in candidates:
                if iou < threshold:
                    break
                if j not in locked[t]:
                    locked[t].add(j)
                    hits[t][rank] = 1
                    break
    return [_interpolated_ap(row, npos) for row in hits]


def _interpolated_ap(hits: list[int], npos: int) -> float:
    precision, recall, tp = [], [], 0
    for n, hit in enumerate(hits, 1):
        tp += hit
        precision.append(tp / n)
        recall.append(tp / npos)
    mprec, mrec = [0.0, *precision, 0.0], [0.0, *recall, 1.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
