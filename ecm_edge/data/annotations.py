"""Temporal annotations: ActivityNet-style JSON and the W-TALC "Thumos14reduced" numpy layout (docs/design.md §4).

Both readers give the same in-memory form, :class:`Annotations`: per video its subset, optional duration and
frame rate, and its segments (seconds) with class names. Segment bounds may be strings in the JSON files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecm_edge.errors import DataError
from ecm_edge.io import atomic_write_json

# The W-TALC layout calls the THUMOS14 validation videos (used for training) "validation".
_SUBSET_ALIASES = {"validation": "validation", "training": "train", "testing": "test"}


@dataclass
class VideoAnnotation:
    video_id: str
    subset: str
    segments: np.ndarray  # [N, 2] float64 start, end in seconds
    labels: list[str]  # N class names, aligned with segments
    duration: float | None = None  # seconds
    fps: float | None = None  # frames per second of the source video

    @property
    def classes(self) -> list[str]:
        """Distinct class names of the video, sorted."""
        return sorted(set(self.labels))


@dataclass
class Annotations:
    videos: dict[str, VideoAnnotation]
    class_names: list[str] = field(default_factory=list)  # sorted, the class-index order everywhere

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = sorted({label for v in self.videos.values() for label in v.labels})

    @property
    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    def subset(self, name: str) -> Annotations:
        """The videos of one subset (``train``/``validation``/``test``); class list kept."""
        return Annotations({k: v for k, v in self.videos.items() if v.subset == name}, list(self.class_names))

    def select(self, video_ids: Iterable[str]) -> Annotations:
        """The given videos in the given order; an id without annotation is an error naming it."""
        ids = list(video_ids)
        missing = [v for v in ids if v not in self.videos]
        if missing:
            raise DataError(f"{len(missing)} video(s) have no annotation, e.g. {missing[0]!r}")
        return Annotations({k: self.videos[k] for k in ids}, list(self.class_names))

    def multi_hot(self, video_id: str) -> np.ndarray:
        """Video-level label vector [C] (1 for every class present in the video)."""
        label = np.zeros(len(self.class_names), dtype=np.float32)
        index = self.class_index
        for name in self.videos[video_id].labels:
            label[index[name]] = 1.0
        return label

    @property
    def num_segments(self) -> int:
        return sum(len(v.labels) for v in self.videos.values())

    def to_activitynet(self) -> dict:
        """The ActivityNet-style JSON document (numeric bounds)."""
        database = {}
        for vid, v in self.videos.items():
            entry: dict = {"subset": v.subset, "annotations": [
                {"segment": [float(s), float(e)], "label": lab} for (s, e), lab in zip(v.segments, v.labels, strict=True)]}
            if v.duration is not None:
                entry["duration"] = float(v.duration)
            if v.fps is not None:
                entry["fps"] = float(v.fps)
            database[vid] = entry
        return {"database": database}

    def save_json(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_activitynet())


def load_annotations(path: str | Path, class_names: list[str] | None = None) -> Annotations:
    """Read an ActivityNet-style JSON file or a W-TALC reduced folder, whichever ``path`` is."""
    path = Path(path)
    if path.is_dir():
        if (path / "videoname.npy").exists():
            return load_wtalc_reduced(path, class_names)
        if (path / "gt.json").exists():
            return load_activitynet_json(path / "gt.json", class_names)
        raise DataError(f"{path} holds neither gt.json nor a W-TALC layout (videoname.npy, segments.npy, ...)")
    return load_activitynet_json(path, class_names)


def load_activitynet_json(path: str | Path, class_names: list[str] | None = None) -> Annotations:
    """Read ``{"database": {vid: {"subset", "duration"?, "fps"?, "annotations": [...]}}}``."""
    path = Path(path)
    document = _read_json(path)
    database = document.get("database") if isinstance(document, dict) else None
    if not isinstance(database, dict):
        raise DataError(f"{path}: expected an ActivityNet-style JSON with a top-level 'database' mapping")
    videos = {}
    for vid, entry in database.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: video {vid!r} must map to an object")
        segments, labels = [], []
        for i, ann in enumerate(entry.get("annotations", [])):
            where = f"{path}: video {vid!r}, annotation {i}"
            try:
                start, end = (float(x) for x in ann["segment"])
                label = str(ann["label"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where}: needs 'segment': [start, end] (numbers) and 'label'") from None
            _check_segment(start, end, where)
            segments.append((start, end))
            labels.append(label)
        videos[vid] = VideoAnnotation(
            video_id=vid,
            subset=_SUBSET_ALIASES.get(entry.get("subset", ""), entry.get("subset", "")),
            segments=np.asarray(segments, dtype=np.float64).reshape(-1, 2),
            labels=labels,
            duration=_optional_float(entry.get("duration"), f"{path}: video {vid!r} duration"),
            fps=_optional_float(entry.get("fps"), f"{path}: video {vid!r} fps"),
        )
    return _with_classes(Annotations(videos), class_names, str(path))


def load_wtalc_reduced(folder: str | Path, class_names: list[str] | None = None) -> Annotations:
    """Read the W-TALC "Thumos14reduced" numpy arrays (videoname, subset, segments, labels, duration, fps)."""
    folder = Path(folder)

    def array(name: str) -> np.ndarray:
        file = folder / f"{name}.npy"
        if not file.exists():
            raise DataError(f"{file} is missing; a W-TALC layout needs videoname, subset, segments, labels, "
                            "classlist and duration .npy files")
        try:
            return np.load(file, allow_pickle=True)
        except Exception as exc:
            raise DataError(f"{file} is not a readable numpy file: {exc}") from None

    names = [_text(v) for v in array("videoname")]
    subsets = [_text(v) for v in array("subset")]
    segments, labels = array("segments"), array("labels")
    durations = array("duration").reshape(-1)
    fps = array("original_fps").reshape(-1) if (folder / "original_fps.npy").exists() else None
    classlist = [_text(c) for c in array("classlist")]
    videos = {}
    for i, vid in enumerate(names):
        segs = np.asarray(segments[i], dtype=np.float64).reshape(-1, 2)
        labs = [str(x) for x in labels[i]]
        if len(labs) != len(segs):
            raise DataError(f"{folder}: video {vid!r} has {len(segs)} segments but {len(labs)} labels")
        for j, (s, e) in enumerate(segs):
            _check_segment(s, e, f"{folder}: video {vid!r}, segment {j}")
        videos[vid] = VideoAnnotation(vid, _SUBSET_ALIASES.get(subsets[i], subsets[i]), segs, labs,
                                      duration=float(durations[i]),
                                      fps=float(fps[i]) if fps is not None else None)
    return _with_classes(Annotations(videos, sorted(classlist)), class_names, str(folder))


def load_ambiguous(path: str | Path) -> dict[str, np.ndarray]:
    """``Ambiguous_test.txt``: lines ``video start end`` → {video: [N, 2] seconds}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ambiguous-segment file {path} does not exist")
    spans: dict[str, list[tuple[float, float]]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            vid, start, end = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{lineno}: expected 'video start end', got {line!r}") from None
        _check_segment(start, end, f"{path}:{lineno}: video {vid!r}")
        spans.setdefault(vid, []).append((start, end))
    return {vid: np.asarray(s, dtype=np.float64).reshape(-1, 2) for vid, s in spans.items()}


def read_split(path: str | Path) -> list[str]:
    """A split file: one video id per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _with_classes(ann: Annotations, class_names: list[str] | None, source: str) -> Annotations:
    if class_names is None:
        return ann
    known = set(class_names)
    for vid, v in ann.videos.items():
        unknown = sorted(set(v.labels) - known)
        if unknown:
            raise DataError(f"{source}: video {vid!r} has label {unknown[0]!r}, which is not one of the "
                            f"{len(class_names)} known classes")
    ann.class_names = list(class_names)
    return ann


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None


def _check_segment(start: float, end: float, where: str) -> None:
    if not (np.isfinite(start) and np.isfinite(end)):
        raise DataError(f"{where}: segment bounds must be finite, got [{start}, {end}]")
    if end < start:
        raise DataError(f"{where}: segment ends before it starts ([{start}, {end}])")
    if start < 0:
        raise DataError(f"{where}: segment has a negative time ([{start}, {end}]); times are seconds from the "
                        "start of the video, so they must be >= 0")


def _optional_float(value: object, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where} must be a number, got {value!r}") from None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
