"""``ecm-edge viz``: one video's ground truth vs detections as a timeline image, and optionally ``.srt``."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from ecm_edge.errors import DataError
from ecm_edge.rawpred import RawPredictions

logger = logging.getLogger("ecm_edge")

_RAW_KEYS = ("video_ids", "cas", "lengths", "video_scores", "num_frames", "fps", "duration", "class_names")


@dataclass
class RawVideo:
    """One video's raw predictions: CAS ``[C, T]`` (logits), video scores ``[C]`` and the time span of T."""

    cas: np.ndarray
    video_scores: np.ndarray
    class_names: list[str]
    span: float  # seconds covered by the T CAS columns


@click.command()
@click.option("--pred", "pred_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Detections: ActivityNet result JSON.")
@click.option("--gt", "gt_path", required=True, type=click.Path(path_type=Path),
              help="Ground truth: ActivityNet-style JSON or a W-TALC folder.")
@click.option("--raw", "raw_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Raw predictions (.npz from --save-raw) to draw the CAS curves.")
@click.option("--video", "video_id", required=True, help="Video id to draw.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Image to write (.png, .pdf or .svg).")
@click.option("--srt", "srt_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the shown detections as .srt subtitles.")
@click.option("--min-score", type=float, default=None, help="Hide detections scoring below this.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Show at most this many detections (the highest scoring).")
def viz(pred_path: Path, gt_path: Path, raw_path: Path | None, video_id: str, out_path: Path,
        srt_path: Path | None, min_score: float | None, top: int) -> None:
    """Draw a video's ground truth vs detections (and CAS curves with --raw); optionally write .srt subtitles."""
    from ecm_edge.data.annotations import load_annotations
    from ecm_edge.evaluation import load_predictions
    from ecm_edge.viz import as_detections, plot_timeline, select_detections, write_srt

    annotations = load_annotations(gt_path)
    if video_id not in annotations.videos:
        raise DataError(f"video {video_id!r} is not in {gt_path}{_known_ids_hint(video_id, annotations.videos)}")
    results = load_predictions(pred_path)
    if video_id not in results:
        logger.warning("%s has no detections for %s; drawing the ground truth only", pred_path, video_id)
    detections = as_detections(results.get(video_id, []), source=f"{pred_path}: video {video_id!r}")
    shown = select_detections(detections, min_score=min_score, top=top)
    raw = load_raw_video(raw_path, video_id) if raw_path is not None else None
    truth = annotations.videos[video_id]
    class_names = _merged_class_names(annotations.class_names, [d.label for d in shown],
                                      raw.class_names if raw else [])
    duration = truth.duration or (raw.span if raw else None) or _latest_end(truth.segments, shown)
    cas, scores = _aligned_raw(raw, class_names) if raw else (None, None)
    plot_timeline(video_id, list(zip(truth.labels, truth.segments[:, 0], truth.segments[:, 1], strict=True)),
                  shown, class_names, cas=cas, video_scores=scores, duration=duration, out_path=out_path,
                  title=_title(video_id, truth.labels, detections, shown))
    click.echo(f"wrote {out_path} ({len(truth.labels)} ground-truth segments, {len(shown)} of "
               f"{len(detections)} detections{', CAS curves' if raw else ''})")
    if srt_path is not None:
        write_srt(shown, srt_path)
        click.echo(f"wrote {srt_path} ({len(shown)} subtitles)")
        click.echo(f"next: play the video with them, e.g. mpv <video file> --sub-file={srt_path}")


def load_raw_video(path: Path, video_id: str) -> RawVideo:
    """One video's entry of a raw-prediction ``.npz`` (keys ``video_ids, cas [N, C, Tmax], lengths, ...``)."""
    raw = _open_raw(path)
    ids = [str(v) for v in np.asarray(_field(raw, "video_ids", path)).tolist()]
    if video_id not in ids:
        raise DataError(f"video {video_id!r} is not in the raw predictions {path}{_known_ids_hint(video_id, ids)}")
    i = ids.index(video_id)
    length = int(np.asarray(_field(raw, "lengths", path))[i])
    cas = np.asarray(_field(raw, "cas", path))
    if cas.ndim != 3 or length > cas.shape[2]:
        raise DataError(f"{path}: 'cas' must be [N, C, Tmax] with Tmax ≥ lengths, got shape {cas.shape} and "
                        f"length {length} for {video_id!r}")
    fps, num_frames, duration = (_per_video(raw, name, path, i) for name in ("fps", "num_frames", "duration"))
    # Post-processing maps CAS columns onto the video's frames, then frames to seconds by fps (else by duration).
    span = num_frames / fps if fps > 0 and num_frames > 0 else duration
    return RawVideo(cas=cas[i, :, :length], video_scores=np.asarray(_field(raw, "video_scores", path))[i],
                    class_names=[str(c) for c in np.asarray(_field(raw, "class_names", path)).tolist()], span=span)


def _open_raw(path: Path) -> RawPredictions:
    if not path.is_file():
        raise DataError(f"raw prediction file {path} does not exist")
    return RawPredictions.load(path)


def _field(raw: Any, name: str, path: Path) -> Any:
    value = raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)
    if value is None:
        raise DataError(f"{path} lacks {name!r}; raw predictions need {', '.join(_RAW_KEYS)}")
    return value


def _per_video(raw: Any, name: str, path: Path, index: int) -> float:
    """Video ``index``'s value of a per-video array, or the value of a scalar shared by all videos."""
    values = np.asarray(_field(raw, name, path), dtype=np.float64).reshape(-1)
    return float(values[index] if values.size > 1 else values[0])


def _aligned_raw(raw: RawVideo, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CAS rows and video scores reordered to ``class_names`` (classes the raw file lacks: flat zero)."""
    index = {name: i for i, name in enumerate(raw.class_names)}
    if raw.cas.shape[0] != len(raw.class_names):
        raise DataError(f"raw predictions have {raw.cas.shape[0]} CAS rows but {len(raw.class_names)} class names")
    cas = np.zeros((len(class_names), raw.cas.shape[1]))
    scores = np.full(len(class_names), np.nan)
    for row, name in enumerate(class_names):
        if name in index:
            cas[row] = raw.cas[index[name]]
            scores[row] = raw.video_scores[index[name]]
    return cas, scores


def _merged_class_names(*groups: Iterable[str]) -> list[str]:
    names: list[str] = []
    for group in groups:
        names += [n for n in group if n not in names]
    return names


def _latest_end(segments: np.ndarray, detections: list[Any]) -> float:
    ends = [float(e) for e in segments[:, 1]] + [d.end for d in detections]
    return max(ends, default=0.0) * 1.02 or 1.0


def _known_ids_hint(video_id: str, ids: Iterable[str]) -> str:
    ids = list(ids)
    close = difflib.get_close_matches(video_id, ids, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" ({len(ids)} videos, e.g. {', '.join(ids[:5])}){hint}"


def _title(video_id: str, labels: list[str], detections: list[Any], shown: list[Any]) -> str:
    hidden = len(detections) - len(shown)
    suffix = f" (top {len(shown)} shown)" if hidden else ""
    return f"{video_id}: {len(labels)} ground-truth segments, {len(detections)} detections{suffix}"
