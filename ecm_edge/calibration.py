"""Operating points from held-out data: the per-class ``segment`` score from which a detection alerts, chosen so
that alerts reach a target precision (``ecm-edge calibrate``; docs/design.md §7, Alerts).

1. The *stream* runs over the held-out videos (``--split``; default the validation videos the run held out): the
   run's deploy folder through :class:`~ecm_edge.runtime.engine.StreamEngine`, each video its own stream from
   time 0, features pushed as fast as the engine takes them, so the points are chosen on the detections a
   deployment emits, not on the offline pipeline's.
2. Its ``segment`` events are matched to the ground truth per class at ``alerts.tiou`` by the evaluation's greedy
   matching (:func:`ecm_edge.evaluation.match_detections`: highest score first, each instance matched once).
   Segments shorter than ``alerts.min_duration_s`` are left out first: they never alert.
3. Per class, :func:`pick_threshold` takes the LOWEST score threshold whose precision (over the segments scoring
   at or above it) reaches ``alerts.precision``: of the thresholds that reach the target, the lowest keeps the
   most instances. A class with fewer than ``alerts.min_instances`` held-out instances, or whose precision never
   reaches the target, gets the global point: the same rule over all classes pooled.
4. On the test split the stream runs again and :func:`alert_report` gives per class and overall the precision,
   the recall and the false alerts per hour of video at those points.

This module runs the streaming runtime, so it sits above it with the other apps (``ecm_edge.parity``); the
runtime reads the result through ``ecm_edge.operating_points`` only. It prints nothing: progress goes through
the caller's ``progress`` factory, the rest through the ``ecm_edge`` logger.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.config import Config, config_from_stored
from ecm_edge.data.annotations import load_ambiguous
from ecm_edge.data.dataset import VideoDataset
from ecm_edge.deploy_format import DEPLOY_REBUILD, META_NAME, WEIGHTS_NAME, read_deploy_meta
from ecm_edge.errors import CheckpointError, DataError
from ecm_edge.evaluation import DetectionMatches, find_ambiguous_file, match_detections
from ecm_edge.operating_points import (
    GLOBAL_LABEL,
    ClassPoint,
    OperatingPoints,
    operating_points_path,
    read_operating_points,
    write_operating_points,
)
from ecm_edge.runtime.events import SEGMENT
from ecm_edge.version import __version__

log = logging.getLogger("ecm_edge")

Progress = Callable[[int, str], Callable[[int], None]]  # (total, description) -> advance(n)

VAL_SPLIT = "val"  # the training videos the run held out for validation (data.val_fraction, data.val_seed)
CALIBRATION_SPLITS = (VAL_SPLIT, "train", "test")
TEST_SPLIT = "test"
STREAMS_AT_ONCE = 32  # videos streamed side by side in one engine (one batched head call per tick)
SECONDS_PER_HOUR = 3600.0
# the global point when the held-out split gave no segment at all: nothing to choose from, so every segment alerts
NO_SEGMENT_MIN_SCORE = 0.0


@dataclass(frozen=True)
class ThresholdPick:
    """What one score threshold gives on a set of matched segments."""

    min_score: float | None  # None: there is no segment, so no threshold
    precision: float | None  # over the segments scoring >= min_score (None: none does)
    recall: float | None  # matched instances / instances (None: no instance)
    reached: bool  # precision >= the target
    best_precision: float | None  # the highest precision any threshold gives (for the messages)


@dataclass
class CalibrationResult:
    points: OperatingPoints
    path: Path  # where operating_points.json was written


# ------------------------------------------------------------------------------------------------ the rule


def pick_threshold(scores: np.ndarray, true_positive: np.ndarray, instances: int, target: float) -> ThresholdPick:
    """The lowest score threshold whose precision over the segments scoring at or above it reaches ``target``.

    The candidate thresholds are the segments' distinct scores (a threshold between two of them keeps the same
    segments as the higher one). Where no threshold reaches the target, the pick is the lowest threshold with the
    highest precision, ``reached`` False: the best the segments allow, for a caller that reports the miss; where
    no segment matched at all, the highest score (the fewest false alerts).
    """
    scores, hits = np.asarray(scores, np.float64), np.asarray(true_positive, bool)
    if scores.size == 0:
        return ThresholdPick(None, None, None, False, None)
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    kept = np.arange(1, ranked.size + 1)
    matched = np.cumsum(hits[order])
    last_of_score = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold keeps every segment of its score
    thresholds, kept, matched = ranked[last_of_score], kept[last_of_score], matched[last_of_score]
    precision = matched / kept
    at = _chosen(precision, target)
    recall = float(matched[at] / instances) if instances > 0 else None
    return ThresholdPick(float(thresholds[at]), float(precision[at]), recall, bool(precision[at] >= target),
                         float(precision.max()))


def _chosen(precision: np.ndarray, target: float) -> int:
    """Index of the chosen threshold among thresholds in descending order (so the last index is the lowest)."""
    reaching = np.flatnonzero(precision >= target)
    if reaching.size:
        return int(reaching[-1])
    best = precision.max()
    return int(np.flatnonzero(precision == best)[-1]) if best > 0 else 0


def at_threshold(scores: np.ndarray, true_positive: np.ndarray, instances: int, min_score: float,
                 target: float) -> ThresholdPick:
    """Precision and recall of the segments scoring at or above a given ``min_score``."""
    kept = np.asarray(scores, np.float64) >= min_score
    alerts, matched = int(kept.sum()), int(np.asarray(true_positive, bool)[kept].sum())
    precision = matched / alerts if alerts else None
    return ThresholdPick(min_score, precision, matched / instances if instances > 0 else None,
                         precision is not None and precision >= target, None)


def choose_points(matches: DetectionMatches, target: float, min_instances: int, *, tiou: float, split: str,
                  source: dict[str, Any] | None = None) -> OperatingPoints:
    """Every class's point from the held-out ``matches`` (see the module doc), the global point pooled."""
    total = int(matches.instances.sum())
    pooled = pick_threshold(matches.score, matches.true_positive, total, target)
    _warn_about_pooled(pooled, target)
    global_score = pooled.min_score if pooled.min_score is not None else NO_SEGMENT_MIN_SCORE
    classes = {label: _point_of_class(matches, c, target, min_instances, global_score)
               for c, label in enumerate(matches.class_names)}
    reported = pooled if pooled.min_score is not None else replace(pooled, min_score=global_score)
    global_point = _class_point(GLOBAL_LABEL, reported, pooled.reached, total,
                                "" if pooled.reached else _miss_note(pooled, target))
    return OperatingPoints(target_precision=target, tiou=tiou, split=split, global_min_score=global_score,
                           classes=classes, test=None, source=dict(source or {}), global_point=global_point)


def _point_of_class(matches: DetectionMatches, c: int, target: float, min_instances: int,
                    global_score: float) -> ClassPoint:
    """Class ``c``'s own point when it has ``min_instances`` and reaches the target, else the global one with
    what it gives on the class's segments and why."""
    label, mine = matches.class_names[c], matches.cls == c
    scores, hits, instances = matches.score[mine], matches.true_positive[mine], int(matches.instances[c])
    own = pick_threshold(scores, hits, instances, target)
    if instances >= min_instances and own.reached:
        return _class_point(label, own, True, instances)
    note = (f"{instances} held-out instance(s), fewer than alerts.min_instances = {min_instances}"
            if instances < min_instances else _miss_note(own, target))
    return _class_point(label, at_threshold(scores, hits, instances, global_score, target), False, instances, note)


def _warn_about_pooled(pooled: ThresholdPick, target: float) -> None:
    if pooled.min_score is None:
        log.warning("the stream emitted no segment on the held-out videos, so the operating points carry no "
                    "information (every segment alerts); train longer or calibrate on more videos")
    elif not pooled.reached:
        log.warning("no score threshold reaches precision %.2f on the held-out videos (best %.2f): every class "
                    "without a point of its own gets the most precise threshold there was", target,
                    pooled.best_precision)


def _miss_note(pick: ThresholdPick, target: float) -> str:
    if pick.best_precision is None:
        return "no segment of this class on the held-out split"
    return f"precision never reaches {target:.2f} on the held-out split (best {pick.best_precision:.2f})"


def _class_point(label: str, pick: ThresholdPick, calibrated: bool, instances: int, note: str = "") -> ClassPoint:
    return ClassPoint(label=label, min_score=float(pick.min_score), calibrated=calibrated, instances=instances,
                      precision=pick.precision, recall=pick.recall, note=note)


def alert_report(matches: DetectionMatches, points: OperatingPoints, hours: float) -> dict[str, Any]:
    """Per class and overall: alerts, true and false alerts, precision, recall and false alerts per hour of video
    at ``points`` (the test split's part of the sidecar)."""
    alerting = matches.score >= np.array([points.min_score(matches.class_names[c]) for c in matches.cls])
    rows = {label: _report_row(alerting & (matches.cls == c), matches.true_positive, int(matches.instances[c]),
                               hours) for c, label in enumerate(matches.class_names)}
    overall = _report_row(alerting, matches.true_positive, int(matches.instances.sum()), hours)
    return {"classes": rows, "overall": overall}


def _report_row(alerting: np.ndarray, true_positive: np.ndarray, instances: int, hours: float) -> dict[str, Any]:
    alerts, true_alerts = int(alerting.sum()), int((alerting & true_positive).sum())
    false_alerts = alerts - true_alerts
    return {"alerts": alerts, "true_alerts": true_alerts, "false_alerts": false_alerts, "instances": instances,
            "precision": true_alerts / alerts if alerts else None,
            "recall": true_alerts / instances if instances else None,
            "false_alerts_per_hour": false_alerts / hours if hours > 0 else None}


# ------------------------------------------------------------------------------------------------ the stream


def stream_segments(engine: Any, dataset: VideoDataset, min_duration_s: float = 0.0,
                    advance: Callable[[int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The ``segment`` events of every video of ``dataset`` streamed through ``engine`` (a
    :class:`~ecm_edge.runtime.engine.StreamEngine`), as ActivityNet results ({video: [{label, score, segment}]}).

    Each video is its own stream on its own clock from 0, pushed in pieces of at most ``stream.queue_snippets``
    snippets (none dropped) and flushed at its end; up to :data:`STREAMS_AT_ONCE` videos share each tick.
    Segments shorter than ``min_duration_s`` are left out. ``advance(1)`` after each video."""
    results: dict[str, list[dict[str, Any]]] = {vid: [] for vid in dataset.video_ids}
    piece = engine.config.stream.queue_snippets
    waiting, active = list(dataset.video_ids), {}
    while waiting or active:
        while waiting and len(active) < STREAMS_AT_ONCE:
            video_id = waiting.pop(0)
            engine.add_stream(video_id)
            active[video_id] = [dataset.features(video_id), 0]
        for video_id, state in active.items():
            features, at = state
            _push(engine, video_id, features[at:at + piece], start_time=0.0 if at == 0 else None)
            state[1] = at + piece
        _collect(engine.step(), results, min_duration_s)
        for video_id in [v for v, (features, at) in active.items() if at >= len(features)]:
            _collect(engine.remove_stream(video_id), results, min_duration_s)
            del active[video_id]
            if advance is not None:
                advance(1)
    return results


def _push(engine: Any, video_id: str, features: np.ndarray, start_time: float | None) -> None:
    queued = engine.push(video_id, features, start_time=start_time)
    if queued != len(features):
        raise DataError(f"the stream of video {video_id!r} dropped {len(features) - queued} snippet(s) while "
                        "calibrating; raise stream.queue_snippets")


def _collect(events: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]], min_duration_s: float) -> None:
    for event in events:
        if event.get("type") == SEGMENT and event["end"] - event["start"] >= min_duration_s:
            results[event["source"]].append({"label": event["label"], "score": float(event["score"]),
                                             "segment": [float(event["start"]), float(event["end"])]})


# ------------------------------------------------------------------------------------------------ the videos


def run_folder(checkpoint: str | Path) -> Path:
    """The run (deploy) folder of ``checkpoint`` (the folder, or its ``model.safetensors``), checked to hold the
    deploy weights; their absence names the ``--redeploy`` fix."""
    folder = Path(checkpoint)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"run folder {folder} does not exist; pass a training run folder (runs/train/NAME)")
    missing = [name for name in (WEIGHTS_NAME, META_NAME) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} has no deploy weights ({' + '.join(missing)} missing); calibrate a training "
                              f"run folder (runs/train/NAME), or {DEPLOY_REBUILD}")
    return folder


def held_out_videos(data_dir: Path, requested: str | None, meta: dict[str, Any],
                    trained: Config) -> tuple[VideoDataset, str]:
    """The videos to calibrate on and their split's name: ``requested``, else the run's held-out videos (``val``),
    else, where the run held none out, the training split with a warning (the model has seen those videos, so
    the points are optimistic)."""
    if requested is not None:
        return split_videos(data_dir, requested, trained), requested
    if _held_videos_out(meta, trained):
        held_out = split_videos(data_dir, VAL_SPLIT, trained, required=False)
        if len(held_out):
            return held_out, VAL_SPLIT
    log.warning("the run held no training videos out for validation (data.val_fraction = %g, train.eval_split = "
                "%s): calibrating on the training split, whose videos the model has seen, so the points are "
                "optimistic; train with data.val_fraction > 0 for held-out points", trained.data.val_fraction,
                trained.train.eval_split)
    return split_videos(data_dir, "train", trained), "train"


def _held_videos_out(meta: dict[str, Any], trained: Config) -> bool:
    """Whether the run validated on held-out training videos: what ``model.json`` records, else (folders rebuilt
    with ``--redeploy``) what its config says."""
    training = meta.get("training") or {}
    if "eval_split" in training:
        return training["eval_split"] == VAL_SPLIT
    return trained.data.val_fraction > 0 and trained.train.eval_split == VAL_SPLIT


def split_videos(data_dir: Path, split: str, trained: Config, required: bool = True) -> VideoDataset:
    """The videos of ``split``: ``val`` = the training videos the run held out (the trainer's rule,
    ``data.val_fraction`` and ``data.val_seed`` of the run's config, on DIR's training split), ``train`` / ``test``
    = DIR's split. Without ``required`` an empty ``val`` is returned as it is."""
    if split not in CALIBRATION_SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(CALIBRATION_SPLITS)}")
    dataset = VideoDataset.open(data_dir, trained, TEST_SPLIT if split == TEST_SPLIT else "train")
    if split != VAL_SPLIT:
        return dataset
    _, held_out = (dataset.holdout(trained.data.val_fraction, trained.data.val_seed)
                   if trained.data.val_fraction > 0 else (dataset, dataset.subset_ids([])))
    if required and not held_out:
        raise DataError(f"no held-out videos: the run holds none of {data_dir}'s training videos out "
                        f"(data.val_fraction = {trained.data.val_fraction:g}, every class kept in training); pass "
                        "--split train (optimistic: the model has seen them) or --split test")
    return held_out


def _check_classes(dataset: VideoDataset, class_names: Sequence[str], data_dir: Path) -> None:
    if list(dataset.class_names) != list(class_names):
        raise DataError(f"{data_dir} has classes {dataset.class_names[:3]}… but the model was trained on "
                        f"{list(class_names)[:3]}…; calibrate on the dataset the model was trained for")


def _hours(dataset: VideoDataset) -> float:
    return sum(dataset.duration(v) for v in dataset.video_ids) / SECONDS_PER_HOUR


def _ambiguous(cfg: Config, data_dir: Path, split: str) -> dict[str, np.ndarray] | None:
    """The THUMOS14 protocol's ambiguous stretches on the test split, as ``ecm-edge eval`` applies them."""
    if cfg.eval.protocol != "thumos14" or split != TEST_SPLIT:
        return None
    return load_ambiguous(find_ambiguous_file(data_dir))


def config_sha256(cfg: Config) -> str:
    """A hash of the resolved config (canonical JSON), recorded with the points."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ the whole step


def calibrate_run(checkpoint: str | Path, data_dir: str | Path, *, split: str | None = None,
                  config: Config | str | Path | None = None, overrides: Sequence[str] = (),
                  test: bool = True, progress: Progress | None = None) -> CalibrationResult:
    """Choose the run's operating points on ``split`` (default: the videos it held out), measure them on the test
    split (``test``; skipped with a warning where DIR has none), write ``operating_points.json`` into the run
    folder. ``config`` / ``overrides`` refine the run's config (``alerts.precision``, ``alerts.tiou``, ...)."""
    from ecm_edge.runtime.engine import StreamEngine

    folder, data_dir = run_folder(checkpoint), Path(data_dir)
    meta = read_deploy_meta(folder / META_NAME)
    trained = config_from_stored(meta.get("config") or {}, source=str(folder / META_NAME))
    held_out, split = held_out_videos(data_dir, split, meta, trained)
    _drop_unreadable_points(folder)
    engine = StreamEngine.from_artifacts(folder, "numpy", config=config, overrides=overrides)
    try:
        cfg, alerts = engine.config, engine.config.alerts
        _check_classes(held_out, engine.class_names, data_dir)
        if split == TEST_SPLIT and test:
            log.warning("calibrating on the test split: the test figures below are then not held out")
        matches = _matched(engine, held_out, cfg, data_dir, split, progress)
        source = {"run": str(folder), "weights_sha256": meta.get("weights_sha256"), "data": str(data_dir),
                  "videos": len(held_out), "hours": _hours(held_out), "config": cfg.name,
                  "config_sha256": config_sha256(cfg), "min_instances": alerts.min_instances,
                  "min_duration_s": alerts.min_duration_s, "ecm_edge_version": __version__}
        points = choose_points(matches, alerts.precision, alerts.min_instances, tiou=alerts.tiou, split=split,
                               source=source)
        if test:
            points = replace(points, test=_test_report(engine, points, cfg, data_dir, progress))
    finally:
        engine.close()
    if cfg.alerts.min_score > 0:
        log.warning("alerts.min_score = %g is set: a stream alerts from that score for every class and ignores these "
                    "operating points", cfg.alerts.min_score)
    return CalibrationResult(points, write_operating_points(folder, points))


def _drop_unreadable_points(folder: Path) -> None:
    """A damaged ``operating_points.json`` would stop the stream from loading the folder, and this step is what
    rewrites it: it is removed, with a warning, before the stream starts."""
    try:
        read_operating_points(folder)
    except CheckpointError as exc:
        log.warning("replacing the unreadable operating points of %s (%s)", folder, exc)
        operating_points_path(folder).unlink()


def _matched(engine: Any, dataset: VideoDataset, cfg: Config, data_dir: Path, split: str,
             progress: Progress | None) -> DetectionMatches:
    """The stream's segments on ``dataset`` matched to its ground truth at ``alerts.tiou``."""
    if dataset.annotations.num_segments == 0:
        raise DataError(f"the {split} videos of {data_dir} have no ground-truth instance to calibrate against")
    advance = progress(len(dataset), f"streaming {split} videos") if progress else None
    segments = stream_segments(engine, dataset, cfg.alerts.min_duration_s, advance)
    return match_detections(segments, dataset.annotations, cfg.alerts.tiou,
                            ambiguous=_ambiguous(cfg, data_dir, split), keep_unscored=True)


def _test_report(engine: Any, points: OperatingPoints, cfg: Config, data_dir: Path,
                 progress: Progress | None) -> dict[str, Any] | None:
    """The points' figures on the test split; None (with a warning) where the data folder has no test split."""
    try:
        dataset = VideoDataset.open(data_dir, cfg, TEST_SPLIT)
    except DataError as exc:
        log.warning("no test figures: %s", exc)
        return None
    _check_classes(dataset, engine.class_names, data_dir)
    matches = _matched(engine, dataset, cfg, data_dir, TEST_SPLIT, progress)
    hours = _hours(dataset)
    return {"split": TEST_SPLIT, "videos": len(dataset), "hours": hours, **alert_report(matches, points, hours)}
