"""Detection mAP with the ActivityNet evaluation semantics, vectorized with numpy.

Semantics (those of ActivityNet's ``compute_average_precision_detection``):

- Per class, the predictions of that class over all evaluated videos are ranked by score, highest first. Ties
  keep the input order (a stable sort, ``kind="mergesort"``; the reference's default quicksort leaves tie order
  unspecified). The input order is the order of the results mapping, then of each video's list.
- Each prediction in rank order is compared by temporal IoU with the ground truth of the same video and class;
  the candidates are those with tIoU at or above the threshold, in order of decreasing tIoU (equal tIoU: lower
  ground-truth index first, again a stable order where the reference's is unspecified). The first candidate
  not matched yet becomes matched and the prediction is a true positive; otherwise it is a false positive.
- tIoU = intersection / union, intersection = max(0, min(ends) - max(starts)),
  union = (e_p - s_p) + (e_g - s_g) - intersection; a zero union (two zero-length segments) counts as tIoU 0
  (the reference would divide by zero).
- AP is the interpolated average precision: precision made non-increasing from the right, summed over the
  recall steps (recall = true positives / ground truth of the class).
- mAP at a threshold is the mean AP over the classes that have ground truth in the evaluated videos; a class
  with ground truth but no prediction has AP 0. Detections of other known classes are not scored (counted in
  ``num_unscored``).

Input checks: a detection needs ``label``, ``score`` and ``segment: [start, end]`` with finite numbers,
0 ≤ start ≤ end. Detections of videos outside the evaluated ground truth, or with labels outside its class list,
are an error; with ``ignore_unknown`` they are dropped (not counted as false positives) and the drop is
reported as a counted warning. Evaluated videos missing from the results are scored as all missed, with a
warning, since that usually means the wrong subset.

Greedy matching is sequential by nature; it is computed here for all videos, classes and thresholds at once as
the equivalent fixed point "an edge (prediction, ground truth) is taken when it comes first among the remaining
edges of both its prediction and its ground truth", one numpy pass per round, usually a handful of rounds.

THUMOS14 protocol (``ambiguous``): the official THUMOS14 evaluation marks some test stretches as ambiguous
(``Ambiguous_test.txt``: ``video start end`` per line). Every detection that overlaps such a stretch of its
video (intersection > 0; merely touching it does not count) is removed before scoring, so it is neither a true
nor a false positive. Ground truth is not changed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.data.annotations import Annotations
from ecm_edge.errors import ConfigError, DataError
from ecm_edge.io import atomic_write_json

logger = logging.getLogger("ecm_edge")

RESULTS_VERSION = "VERSION 1.3"
AMBIGUOUS_FILE_NAME = "Ambiguous_test.txt"
_DETECTION_KEYS = ("label", "score", "segment")


@dataclass
class PredictionTable:
    """Detections as columns, in input order (results mapping order, then each video's list order)."""

    videos: list[str]  # distinct video ids, in input order
    video: np.ndarray  # int64 per detection: index into ``videos``
    labels: list[str]  # class name per detection
    start: np.ndarray  # float64 seconds
    end: np.ndarray  # float64 seconds
    score: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.labels)

    def video_of(self, detection: int) -> str:
        return self.videos[int(self.video[detection])]


@dataclass
class EvalResult:
    """Detection mAP per IoU threshold (fractions in [0, 1]) and what was scored."""

    iou: list[float]
    map: list[float]
    average: float
    per_class: dict[str, list[float]]  # class -> AP per threshold, classes with ground truth only
    num_predictions: int  # detections scored
    num_ground_truth: int  # ground-truth segments of the evaluated videos
    warnings: list[str] = field(default_factory=list)
    num_ambiguous_removed: int = 0  # detections dropped by the THUMOS14 protocol
    num_unscored: int = 0  # detections of known classes that have no ground truth in the evaluated videos

    def to_json(self) -> dict[str, Any]:
        return {
            "iou": list(self.iou),
            "map": list(self.map),
            "average": self.average,
            "per_class": {k: list(v) for k, v in self.per_class.items()},
            "num_predictions": self.num_predictions,
            "num_ground_truth": self.num_ground_truth,
            "num_ambiguous_removed": self.num_ambiguous_removed,
            "num_unscored": self.num_unscored,
            "warnings": list(self.warnings),
        }

    def format_table(self) -> str:
        """A markdown table ``IoU | mAP (%)`` with the average as the last row."""
        lines = ["| IoU | mAP (%) |", "|---|---|"]
        lines += [f"| {t:.2f} | {100 * m:.2f} |" for t, m in zip(self.iou, self.map, strict=True)]
        lines.append(f"| avg | {100 * self.average:.2f} |")
        return "\n".join(lines)

    def format_per_class(self) -> str:
        """A markdown table of AP (%) per class (rows) and IoU threshold (columns)."""
        lines = ["| class | " + " | ".join(f"{t:.2f}" for t in self.iou) + " | avg |",
                 "|---|" + "---|" * (len(self.iou) + 1)]
        for name, aps in self.per_class.items():
            cells = " | ".join(f"{100 * a:.2f}" for a in aps)
            lines.append(f"| {name} | {cells} | {100 * sum(aps) / len(aps):.2f} |")
        return "\n".join(lines)


def parse_iou_range(text: str) -> list[float]:
    """``"0.1:0.7:0.1"`` (start:stop:step, stop included) or ``"0.3,0.5,0.7"`` or ``"0.5"`` → thresholds."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if not step > 0:
                raise ConfigError(f"IoU range {text!r}: the step must be positive")
            count = math.floor((stop - start) / step + 1e-9) + 1  # the tolerance keeps a stop hit by rounding
            values = [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"IoU thresholds {text!r}: expected start:stop:step (e.g. 0.1:0.7:0.1) "
                          "or a comma list (e.g. 0.3,0.5,0.7)") from None
    return check_iou_thresholds(values, text)


def check_iou_thresholds(values: Sequence[float], source: str = "IoU thresholds") -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ConfigError(f"{source}: no IoU threshold given")
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise ConfigError(f"{source}: IoU thresholds must lie in (0, 1], got {bad[0]}")
    return values


# ---------------------------------------------------------------------------------------------------- files


def load_predictions(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read an ActivityNet result file ``{"version", "results": {vid: [{label, score, segment}]}, ...}``.

    Every detection is checked (keys, numbers, finite values, end ≥ start); an error names the file, the video
    and the detection. Returns the ``results`` mapping.
    """
    results = _read_results(Path(path))
    predictions_table(results, source=str(path))
    return results


def load_prediction_table(path: str | Path) -> PredictionTable:
    """Like :func:`load_predictions`, but as the checked columns :func:`evaluate_detections` scores directly."""
    return predictions_table(_read_results(Path(path)), source=str(path))


def _read_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"prediction file {path} does not exist")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), dict):
        raise DataError(f"{path}: expected the ActivityNet result format with a top-level 'results' mapping "
                        '{"video": [{"label", "score", "segment": [start, end]}]}')
    return document["results"]


def write_predictions(path: str | Path, results: Mapping[str, Sequence[Mapping[str, Any]]],
                      version: str = RESULTS_VERSION) -> Path:
    """Write detections in the ActivityNet result format, atomically."""
    document = {"version": version, "results": {str(vid): [_plain_detection(d) for d in dets]
                                                for vid, dets in results.items()}, "external_data": {}}
    return atomic_write_json(path, document, indent=None)


def _plain_detection(det: Mapping[str, Any]) -> dict[str, Any]:
    start, end = det["segment"]
    return {"label": str(det["label"]), "score": float(det["score"]), "segment": [float(start), float(end)]}


def detections_to_results(dets: np.ndarray, video_ids: Sequence[str],
                          class_names: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Post-processing output (structured array: video, cls, start, end, score) → ActivityNet results.

    Every video of ``video_ids`` gets an entry (an empty list when it has no detection); detections keep
    their array order.
    """
    missing = [name for name in ("video", "cls", "start", "end", "score") if name not in (dets.dtype.names or ())]
    if missing:
        raise DataError(f"detections array lacks field(s) {', '.join(missing)}; "
                        "expected fields video, cls, start, end, score")
    videos, classes = dets["video"].astype(np.int64), dets["cls"].astype(np.int64)
    _check_index_range(videos, len(video_ids), "video")
    _check_index_range(classes, len(class_names), "cls")
    results: dict[str, list[dict[str, Any]]] = {str(v): [] for v in video_ids}
    for v, c, s, e, sc in zip(videos.tolist(), classes.tolist(), dets["start"].tolist(), dets["end"].tolist(),
                              dets["score"].tolist(), strict=True):
        results[str(video_ids[v])].append({"label": class_names[c], "score": sc, "segment": [s, e]})
    return results


def _check_index_range(values: np.ndarray, size: int, name: str) -> None:
    bad = np.flatnonzero((values < 0) | (values >= size))
    if bad.size:
        raise DataError(f"detection {bad[0]} has {name} index {values[bad[0]]}, outside [0, {size})")


def find_ambiguous_file(near: str | Path) -> Path:
    """``Ambiguous_test.txt`` beside a ground-truth file (or in a data folder) or in its ``reduced/`` sibling."""
    near = Path(near)
    folder = near if near.is_dir() else near.parent
    candidates = [folder / AMBIGUOUS_FILE_NAME, folder / "reduced" / AMBIGUOUS_FILE_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"the thumos14 protocol needs {AMBIGUOUS_FILE_NAME}, found neither "
                    f"{candidates[0]} nor {candidates[1]}; pass its path with --ambiguous")


# ---------------------------------------------------------------------------------------------------- input


def predictions_table(results: Mapping[str, Any], source: str = "predictions") -> PredictionTable:
    """Flatten and check an ActivityNet results mapping; errors name the video and the detection."""
    if not isinstance(results, Mapping):
        raise DataError(f"{source}: results must map video ids to lists of detections")
    labels: list[Any] = []
    segments: list[Any] = []
    scores: list[Any] = []
    counts: list[int] = []
    for vid, dets in results.items():
        if not isinstance(dets, list):
            raise DataError(f"{source}: video {vid!r} must map to a list of detections, got {type(dets).__name__}")
        try:
            for det in dets:
                labels.append(det["label"])
                segments.append(det["segment"])
                scores.append(det["score"])
        except (KeyError, TypeError, IndexError):
            _raise_missing_keys(vid, dets, source)
        counts.append(len(dets))
    table = PredictionTable(list(results), np.repeat(np.arange(len(counts)), counts), labels,
                            np.zeros(0), np.zeros(0), np.zeros(0))
    bounds = _finite_numbers(segments, table, "segment", source)
    table.start, table.end = bounds[:, 0].copy(), bounds[:, 1].copy()
    table.score = _finite_numbers(scores, table, "score", source)
    if set(map(type, labels)) - {str}:
        bad_label = next(i for i, label in enumerate(labels) if not isinstance(label, str))
        raise DataError(f"{source}: video {table.video_of(bad_label)!r}: 'label' must be a class name, "
                        f"got {labels[bad_label]!r}")
    _check_segments(table, source)
    return table


def _check_segments(table: PredictionTable, source: str) -> None:
    """Segments must end at or after their start, and lie at or after 0 s (times are seconds into the video)."""
    reversed_ = np.flatnonzero(table.end < table.start)
    if reversed_.size:
        i = reversed_[0]
        raise DataError(f"{source}: video {table.video_of(i)!r} has a detection that ends before it starts "
                        f"([{table.start[i]}, {table.end[i]}]); {reversed_.size} such detection(s) in all")
    negative = np.flatnonzero(table.start < 0)
    if negative.size:
        i = negative[0]
        raise DataError(f"{source}: video {table.video_of(i)!r} has a detection with a negative time "
                        f"([{table.start[i]}, {table.end[i]}]); times are seconds from the start of the video, "
                        f"so they must be >= 0; {negative.size} such detection(s) in all")


def _raise_missing_keys(vid: str, dets: list[Any], source: str) -> None:
    for i, det in enumerate(dets):
        missing = [k for k in _DETECTION_KEYS if not isinstance(det, dict) or k not in det]
        if missing:
            raise DataError(f"{source}: video {vid!r}, detection {i} lacks key(s) {', '.join(missing)}; "
                            'each detection is {"label", "score", "segment": [start, end]}')


def _finite_numbers(values: list[Any], table: PredictionTable, what: str, source: str) -> np.ndarray:
    """Scores ``[N]`` or segments ``[N, 2]`` as float64 (numeric strings accepted, as in annotation files)."""
    shape = (len(values), 2) if what == "segment" else (len(values),)
    if not values:
        return np.zeros(shape)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != shape:
        i = next((i for i, v in enumerate(values) if not _is_number_like(v, what == "segment")), 0)
        expected = "[start, end] with two numbers" if what == "segment" else "a number"
        raise DataError(f"{source}: video {table.video_of(i)!r}: {what} must be {expected}, got {values[i]!r}")
    finite = np.isfinite(array).reshape(len(values), -1).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{source}: video {table.video_of(i)!r}: {what} must be finite numbers, got {values[i]!r}")
    return array


def _is_number_like(value: Any, pair: bool) -> bool:
    """A scalar that converts to float, or (``pair``) a list of two of them."""
    if pair:
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number_like(v, False) for v in value)
    if isinstance(value, (list, tuple, dict)) or np.ndim(value) != 0:
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass
class DetectionMatches:
    """The scored detections of one tIoU threshold, each with its class and whether the greedy matching paired it
    with a ground-truth instance; what :func:`evaluate_detections` ranks, and what a per-class score threshold
    (``ecm_edge.calibration``) is chosen from."""

    class_names: list[str]
    cls: np.ndarray  # int64 per scored detection: index into class_names
    score: np.ndarray  # float64 per scored detection
    true_positive: np.ndarray  # bool per scored detection
    instances: np.ndarray  # int64 [C]: ground-truth segments per class in the evaluated videos
    warnings: list[str] = field(default_factory=list)
    num_ambiguous_removed: int = 0
    num_unscored: int = 0


def match_detections(predictions: Mapping[str, Any] | PredictionTable, ground_truth: Annotations,
                     iou_threshold: float, *, subset: str | None = None,
                     ambiguous: Mapping[str, np.ndarray] | None = None, ignore_unknown: bool = False,
                     keep_unscored: bool = False) -> DetectionMatches:
    """The matching :func:`evaluate_detections` scores, at one tIoU threshold: every scored detection with its
    class, score and true-positive flag (each ground-truth instance matched at most once, highest score first).
    Arguments and input checks as for :func:`evaluate_detections`; ``keep_unscored`` keeps the detections of
    classes without ground truth in the evaluated videos, as unmatched (false alarms, which mAP cannot score)."""
    prepared = _prepare(predictions, ground_truth, [iou_threshold], subset, ambiguous, ignore_unknown,
                        keep_unscored)
    for message in prepared.warnings:
        logger.warning(message)
    return DetectionMatches(class_names=list(prepared.gt.class_names), cls=prepared.cls, score=prepared.score,
                            true_positive=prepared.tp[0], instances=prepared.gt_counts,
                            warnings=prepared.warnings, num_ambiguous_removed=prepared.removed,
                            num_unscored=prepared.unscored)


def evaluate_detections(predictions: Mapping[str, Any] | PredictionTable, ground_truth: Annotations,
                        iou_thresholds: Sequence[float], *, subset: str | None = None,
                        ambiguous: Mapping[str, np.ndarray] | None = None,
                        ignore_unknown: bool = False) -> EvalResult:
    """Detection mAP of ``predictions`` (ActivityNet results mapping) against ``ground_truth``.

    ``subset`` restricts the ground truth (``test``); ``ambiguous`` ({video: [N, 2] seconds}) applies the
    THUMOS14 protocol. Detections of videos outside the evaluated ground truth, or with a label outside its
    class list, are an error, or with ``ignore_unknown`` dropped with a counted warning.
    """
    thresholds = check_iou_thresholds(iou_thresholds)
    prepared = _prepare(predictions, ground_truth, thresholds, subset, ambiguous, ignore_unknown)
    gt, gt_counts = prepared.gt, prepared.gt_counts
    ap = _average_precision(prepared.tp, prepared.cls, prepared.by_score, gt_counts)
    evaluated = np.flatnonzero(gt_counts > 0)
    mean_ap = ap[:, evaluated].mean(axis=1)
    for message in prepared.warnings:
        logger.warning(message)
    return EvalResult(
        iou=thresholds,
        map=[float(m) for m in mean_ap],
        average=float(mean_ap.mean()),
        per_class={gt.class_names[c]: [float(a) for a in ap[:, c]] for c in evaluated},
        num_predictions=int(prepared.cls.size),
        num_ground_truth=int(gt_counts.sum()),
        warnings=prepared.warnings,
        num_ambiguous_removed=prepared.removed,
        num_unscored=prepared.unscored,
    )


@dataclass
class _Prepared:
    """The checked, filtered detections and their greedy matching, shared by mAP and :func:`match_detections`."""

    gt: Annotations
    gt_counts: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    by_score: np.ndarray
    tp: np.ndarray  # [num_thresholds, num_scored]
    warnings: list[str]
    removed: int
    unscored: int


def _prepare(predictions: Mapping[str, Any] | PredictionTable, ground_truth: Annotations,
             iou_thresholds: Sequence[float], subset: str | None, ambiguous: Mapping[str, np.ndarray] | None,
             ignore_unknown: bool, keep_unscored: bool = False) -> _Prepared:
    thresholds = check_iou_thresholds(iou_thresholds)
    gt = _evaluated_ground_truth(ground_truth, subset)
    table = predictions if isinstance(predictions, PredictionTable) else predictions_table(predictions)
    video_index = {vid: i for i, vid in enumerate(gt.videos)}
    class_index = gt.class_index
    pred_video = np.array([video_index.get(v, -1) for v in table.videos], dtype=np.int64)[table.video]
    pred_class = np.fromiter(map(class_index.get, table.labels, itertools.repeat(-1)), np.int64, len(table))
    gt_video, gt_class, gt_start, gt_end = _ground_truth_arrays(gt, video_index, class_index)
    gt_counts = np.bincount(gt_class, minlength=len(gt.class_names))

    warnings: list[str] = []
    keep = _known_predictions(table, pred_video, pred_class, subset, ignore_unknown, warnings)
    unscored = np.zeros_like(keep) if keep_unscored else _unscored_classes(table, pred_class, gt_counts, keep)
    keep &= ~unscored
    _warn_missing_videos(table, gt, warnings)
    removed = 0
    if ambiguous is not None:
        overlapping = keep & _overlaps_ambiguous(table, pred_video, list(gt.videos), ambiguous)
        removed = int(overlapping.sum())
        keep &= ~overlapping
    index = np.flatnonzero(keep)
    cls, score = pred_class[index], table.score[index]
    by_score = np.argsort(-score, kind="mergesort")  # stable: equal scores keep the input order
    tp = _match(pred_video[index], cls, table.start[index], table.end[index], by_score,
                gt_video, gt_class, gt_start, gt_end, len(gt.videos), np.asarray(thresholds))
    return _Prepared(gt, gt_counts, cls, score, by_score, tp, warnings, removed, int(unscored.sum()))


def _evaluated_ground_truth(ground_truth: Annotations, subset: str | None) -> Annotations:
    if subset is None:
        gt = ground_truth
    else:
        gt = ground_truth.subset(subset)
        if not gt.videos:
            present = sorted({v.subset for v in ground_truth.videos.values()})
            raise DataError(f"the ground truth has no video in subset {subset!r}; its subsets: "
                            f"{', '.join(present) or '(none)'}")
    if gt.num_segments == 0:
        raise DataError("the evaluated ground truth has no segment, so there is nothing to score against")
    return gt


def _known_predictions(table: PredictionTable, pred_video: np.ndarray, pred_class: np.ndarray,
                       subset: str | None, ignore_unknown: bool, warnings: list[str]) -> np.ndarray:
    """Mask of detections whose video and label the ground truth knows; the others error or warn."""
    where = f"ground-truth subset {subset!r}" if subset else "ground truth"
    problems = [(pred_video < 0, f"of video(s) not in the {where}", "video", table.video_of),
                (pred_class < 0, "with label(s) not among the ground-truth classes", "label", table.labels.__getitem__)]
    keep = np.ones(len(table), dtype=bool)
    for unknown, what, noun, name_of in problems:
        if not unknown.any():
            continue
        distinct = sorted({name_of(i) for i in np.flatnonzero(unknown)})
        message = (f"{int(unknown.sum())} detection(s) {what} ({len(distinct)} distinct {noun}(s), "
                   f"e.g. {distinct[0]!r})")
        if not ignore_unknown:
            raise DataError(f"{message}; check the prediction file, or pass --ignore-unknown to drop them")
        warnings.append(f"dropped {message}")
        keep &= ~unknown
    return keep


def _unscored_classes(table: PredictionTable, pred_class: np.ndarray, gt_counts: np.ndarray,
                      keep: np.ndarray) -> np.ndarray:
    """Detections of known classes absent from the evaluated videos: such classes have no AP, so no score.

    A subset (a few held-out videos) often lacks some classes; this is normal, so it is logged, not warned.
    """
    unscored = keep & (pred_class >= 0) & (gt_counts[np.maximum(pred_class, 0)] == 0)
    if unscored.any():
        distinct = sorted({table.labels[i] for i in np.flatnonzero(unscored)})
        logger.info("%d detection(s) of %d class(es) without ground truth in the evaluated videos were not "
                    "scored, e.g. %r", int(unscored.sum()), len(distinct), distinct[0])
    return unscored


def _warn_missing_videos(table: PredictionTable, gt: Annotations, warnings: list[str]) -> None:
    """Evaluated videos absent from the results count as all missed; a partial file is worth a warning."""
    present = set(table.videos)
    missing = [vid for vid in gt.videos if vid not in present]
    if missing:
        warnings.append(f"{len(missing)} of {len(gt.videos)} evaluated video(s) have no entry in the predictions "
                        f"(e.g. {missing[0]!r}), so their ground truth counts as missed; restrict the ground "
                        "truth with a subset if the predictions cover only part of it")


def _ground_truth_arrays(gt: Annotations, video_index: dict[str, int],
                         class_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Video index, class index, start and end per ground-truth segment (videos in order, then segments)."""
    videos = list(gt.videos.values())
    unknown = next((label for v in videos for label in v.labels if label not in class_index), None)
    if unknown is not None:
        raise DataError(f"ground-truth label {unknown!r} is not in the annotation's class list")
    video = np.repeat([video_index[v.video_id] for v in videos], [len(v.labels) for v in videos]).astype(np.int64)
    cls = np.array([class_index[label] for v in videos for label in v.labels], dtype=np.int64)
    bounds = np.concatenate([np.zeros((0, 2))] + [np.asarray(v.segments, np.float64).reshape(-1, 2) for v in videos])
    return video, cls, bounds[:, 0].copy(), bounds[:, 1].copy()


def _overlaps_ambiguous(table: PredictionTable, pred_video: np.ndarray, video_ids: list[str],
                        ambiguous: Mapping[str, np.ndarray]) -> np.ndarray:
    """Detections that share a positive-length stretch with an ambiguous span of their video."""
    spans = [np.asarray(ambiguous.get(vid, ()), dtype=np.float64).reshape(-1, 2) for vid in video_ids]
    span_video = np.repeat(np.arange(len(spans)), [len(s) for s in spans])
    span_bounds = np.concatenate([np.zeros((0, 2)), *spans])
    pred, span = _overlap_candidates(pred_video, table.start, table.end,
                                     span_video, span_bounds[:, 0], span_bounds[:, 1])
    inter = np.minimum(table.end[pred], span_bounds[span, 1]) - np.maximum(table.start[pred], span_bounds[span, 0])
    overlaps = np.zeros(len(table), dtype=bool)
    overlaps[pred[inter > 0]] = True
    return overlaps


def _overlap_candidates(group: np.ndarray, start: np.ndarray, end: np.ndarray, ref_group: np.ndarray,
                        ref_start: np.ndarray, ref_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, reference) index pairs of the same group that may overlap: a superset of the overlapping pairs.

    References are sorted by (group, start); a query's candidates form the window from the first reference
    whose running maximum end passes the query's start to the last one starting before the query's end.
    Times are replaced by their exact ranks so that (group, time) pairs compare as single integers.
    """
    if group.size == 0 or ref_group.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    times, rank = np.unique(np.concatenate([ref_start, ref_end, start, end]), return_inverse=True)
    n_ref, n_times = len(ref_group), len(times)
    r_start, r_end, q_start, q_end = np.split(rank.astype(np.int64), np.cumsum([n_ref, n_ref, len(group)]))
    order = np.lexsort((r_start, ref_group))
    sorted_group = ref_group[order]
    start_key = sorted_group * n_times + r_start[order]
    reach_key = np.maximum.accumulate(sorted_group * n_times + r_end[order])  # resets at each group (keys grow)
    hi = np.searchsorted(start_key, group * n_times + q_end, side="left")  # starts strictly before the end
    lo = np.searchsorted(reach_key, group * n_times + q_start, side="right")  # all ended by the start
    counts = np.maximum(hi - lo, 0)
    query = np.repeat(np.arange(len(group)), counts)
    offsets = np.cumsum(counts) - counts
    return query, order[lo[query] + np.arange(query.size) - offsets[query]]


def _match(video: np.ndarray, cls: np.ndarray, start: np.ndarray, end: np.ndarray, by_score: np.ndarray,
           gt_video: np.ndarray, gt_class: np.ndarray, gt_start: np.ndarray, gt_end: np.ndarray,
           num_videos: int, thresholds: np.ndarray) -> np.ndarray:
    """True-positive flags ``[num_thresholds, num_predictions]`` of the greedy ActivityNet matching.

    ``by_score`` lists the predictions from the highest score down (ties in input order).
    """
    n_pred, n_gt, n_thr = len(video), len(gt_video), len(thresholds)
    pred, gt = _overlap_candidates(cls * num_videos + video, start, end,
                                   gt_class * num_videos + gt_video, gt_start, gt_end)
    inter = np.clip(np.minimum(end[pred], gt_end[gt]) - np.maximum(start[pred], gt_start[gt]), 0.0, None)
    union = (end[pred] - start[pred]) + (gt_end[gt] - gt_start[gt]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    candidate = iou >= thresholds.min()
    pred, gt, iou = pred[candidate], gt[candidate], iou[candidate]
    # Edge priority: prediction rank (score descending, ties in input order), then tIoU descending, then gt index.
    rank = np.empty(n_pred, dtype=np.int64)
    rank[by_score] = np.arange(n_pred)
    order = np.lexsort((gt, -iou, rank[pred]))
    pred, gt, iou = pred[order], gt[order], iou[order]
    thr_of_edge, edge = np.nonzero(iou[None, :] >= thresholds[:, None])  # per threshold, edges keep their order
    matched = _greedy_matching(thr_of_edge * n_pred + pred[edge], thr_of_edge * n_gt + gt[edge],
                               n_thr * n_pred, n_thr * n_gt)
    return matched.reshape(n_thr, n_pred)


def _greedy_matching(pred_key: np.ndarray, gt_key: np.ndarray, n_pred_keys: int, n_gt_keys: int) -> np.ndarray:
    """Which predictions sequential greedy matching pairs up, for edges listed in priority order.

    An edge that comes first among the remaining edges of both its prediction and its ground truth is taken
    by the sequential algorithm too (nothing before it can claim either end). Taking all such edges at once,
    then dropping the other edges of the matched ends, reaches the same matching in a few rounds. Edges of one
    prediction are contiguous in the input; a second view keeps them grouped by ground truth.
    """
    matched_pred = np.zeros(n_pred_keys, dtype=bool)
    matched_gt = np.zeros(n_gt_keys, dtype=bool)
    edge_id = np.arange(len(pred_key))  # remaining edges, priority order
    by_gt = np.argsort(gt_key, kind="stable")  # the same edges grouped by gt, priority order inside a group
    first_of_gt = np.zeros(len(pred_key), dtype=bool)
    while edge_id.size:
        p_keys, g_keys = pred_key[edge_id], gt_key[by_gt]
        first_of_pred = np.ones(edge_id.size, dtype=bool)
        first_of_pred[1:] = p_keys[1:] != p_keys[:-1]
        leading = np.ones(by_gt.size, dtype=bool)
        leading[1:] = g_keys[1:] != g_keys[:-1]
        first_of_gt[by_gt[leading]] = True
        taken = edge_id[first_of_pred & first_of_gt[edge_id]]
        first_of_gt[by_gt[leading]] = False
        matched_pred[pred_key[taken]] = True
        matched_gt[gt_key[taken]] = True
        edge_id = edge_id[~(matched_pred[p_keys] | matched_gt[gt_key[edge_id]])]
        by_gt = by_gt[~(matched_pred[pred_key[by_gt]] | matched_gt[g_keys])]
    return matched_pred


def _average_precision(tp: np.ndarray, cls: np.ndarray, by_score: np.ndarray, gt_counts: np.ndarray) -> np.ndarray:
    """Interpolated AP ``[num_thresholds, num_classes]`` (0 for classes without ground truth or detections).

    Recall rises by 1/npos exactly at the true positives, so AP = Σ over true positives of the precision
    envelope (the maximum precision at that rank or later) / npos.
    """
    ap = np.zeros((tp.shape[0], len(gt_counts)))
    order = by_score[np.argsort(cls[by_score], kind="stable")]  # per class, in score order
    bounds = np.searchsorted(cls[order], np.arange(len(gt_counts) + 1))
    for c in np.flatnonzero(gt_counts > 0):
        members = order[bounds[c]:bounds[c + 1]]
        if members.size == 0:
            continue
        hits = tp[:, members].astype(np.float64)
        precision = np.cumsum(hits, axis=1) / np.arange(1, members.size + 1)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        ap[:, c] = (envelope * hits).sum(axis=1) / gt_counts[c]
    return ap
