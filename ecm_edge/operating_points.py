"""Per-class operating points: the ``segment`` score from which a detection becomes an alert.

``ecm-edge calibrate`` (``ecm_edge.calibration``) chooses them on held-out videos for a target precision and
writes them beside the model as ``operating_points.json``; ``ecm-edge export`` copies that file into every export
folder, so a stream finds it in either kind of folder it loads (docs/design.md §6, §7). This module is the file
format and nothing else: it imports neither the runtime nor torch, so the stream engine and the calibration both
read it from here.

The file::

    {"format": "ecm-edge/operating-points", "format_version": 1,
     "target_precision": 0.8, "tiou": 0.5, "split": "val", "global_min_score": 0.61,
     "global": {"min_score": 0.61, "calibrated": true, "instances": 96, "precision": 0.81, "recall": 0.4, "note": ""},
     "classes": {"Diving": {"min_score": 0.55, "calibrated": true, "instances": 12,
                            "precision": 0.83, "recall": 0.5, "note": ""}, ...},
     "test": {"split": "test", "videos": 210, "hours": 12.7, "classes": {...}, "overall": {...}} | null,
     "source": {"run": ..., "weights_sha256": ..., "data": ..., "config": ..., "config_sha256": ..., ...}}

A class whose point is not its own (``calibrated: false``) carries the global point and says why in ``note``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecm_edge.errors import CheckpointError
from ecm_edge.io import atomic_write_json

OPERATING_POINTS_NAME = "operating_points.json"
OPERATING_POINTS_FORMAT = "ecm-edge/operating-points"
OPERATING_POINTS_VERSION = 1
GLOBAL_LABEL = "*"  # the label of the pooled point (and of the overall row of a report)
RECALIBRATE_HINT = ("write it again with `ecm-edge calibrate --checkpoint RUN --data DIR` (and, for an export "
                    "folder, export again or copy the run's file beside the artifacts)")


@dataclass(frozen=True)
class ClassPoint:
    """One class's operating point and what it gave on the held-out split."""

    label: str
    min_score: float  # segments of this class with score >= min_score alert
    calibrated: bool  # False: the class carries the global point (too few instances, or the target not reached)
    instances: int  # ground-truth instances of the class in the held-out videos
    precision: float | None  # held-out precision at min_score (None: no segment reached it)
    recall: float | None  # held-out recall at min_score (None: no instance)
    note: str = ""  # why the class falls back to the global point ("" when calibrated)


@dataclass(frozen=True)
class OperatingPoints:
    """Every class's operating point, the global fallback, and where they come from."""

    target_precision: float  # alerts.precision the points were chosen for
    tiou: float  # temporal IoU at which a segment matched a ground-truth instance
    split: str  # the held-out split the points were chosen on ("val", "train" or "test")
    global_min_score: float  # the same rule over all classes pooled; classes without a point of their own use it
    classes: dict[str, ClassPoint]
    test: dict[str, Any] | None = None  # precision, recall, false alerts per hour on the test split (per class, overall)
    source: dict[str, Any] = field(default_factory=dict)  # run, weights sha256, data, split videos, config hash
    # the pooled point with its held-out figures (label "*"; calibrated False: no threshold reached the target,
    # global_min_score is then the most precise one there was)
    global_point: ClassPoint | None = None

    def min_score(self, label: str) -> float:
        """The score from which a segment of ``label`` alerts: its class's point, else the global one."""
        point = self.classes.get(label)
        return point.min_score if point is not None else self.global_min_score

    @property
    def weights_sha256(self) -> str | None:
        """sha256 of the deploy weights the points were calibrated for (stale points: another value)."""
        return self.source.get("weights_sha256")

    def to_json(self) -> dict[str, Any]:
        return {"format": OPERATING_POINTS_FORMAT, "format_version": OPERATING_POINTS_VERSION,
                "target_precision": self.target_precision, "tiou": self.tiou, "split": self.split,
                "global_min_score": self.global_min_score,
                "global": None if self.global_point is None else _without_label(self.global_point),
                "classes": {label: _without_label(point) for label, point in self.classes.items()},
                "test": self.test, "source": dict(self.source)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OperatingPoints:
        """The points of a parsed file; a KeyError, TypeError or ValueError on a malformed one."""
        classes = {str(label): _class_point(str(label), entry) for label, entry in dict(raw["classes"]).items()}
        pooled = raw.get("global")
        return cls(target_precision=_number(raw["target_precision"]), tiou=_number(raw["tiou"]),
                   split=str(raw["split"]), global_min_score=_number(raw["global_min_score"]), classes=classes,
                   test=raw.get("test"), source=dict(raw.get("source") or {}),
                   global_point=None if pooled is None else _class_point(GLOBAL_LABEL, pooled))


def operating_points_path(folder: str | Path) -> Path:
    """Where a run, deploy or export folder keeps its points (a file given: its folder's)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    return folder / OPERATING_POINTS_NAME


def read_operating_points(folder: str | Path) -> OperatingPoints | None:
    """The points of a run, deploy or export folder (or of the folder of a file in one); None when it has none.

    A file that is not valid points (unreadable, another format, a newer version, missing or non-numeric fields)
    is a :class:`CheckpointError` that names it and how to write it again."""
    path = operating_points_path(folder)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); {RECALIBRATE_HINT}") from None
    if not isinstance(raw, dict) or raw.get("format") != OPERATING_POINTS_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} is not an ecm-edge operating-points file (format {found!r}); "
                              f"{RECALIBRATE_HINT}")
    version = raw.get("format_version")
    if not isinstance(version, int) or version > OPERATING_POINTS_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}; this ecm-edge reads version "
                              f"{OPERATING_POINTS_VERSION} and older: upgrade ecm-edge or {RECALIBRATE_HINT}")
    try:
        return OperatingPoints.from_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is incomplete or malformed ({type(exc).__name__}: {exc}); "
                              f"{RECALIBRATE_HINT}") from None


def write_operating_points(folder: str | Path, points: OperatingPoints) -> Path:
    """Write ``folder/operating_points.json`` atomically; returns its path."""
    return atomic_write_json(Path(folder) / OPERATING_POINTS_NAME, points.to_json())


def _without_label(point: ClassPoint) -> dict[str, Any]:
    entry = asdict(point)
    del entry["label"]  # the key of the classes mapping
    return entry


def _class_point(label: str, entry: Mapping[str, Any]) -> ClassPoint:
    return ClassPoint(label=label, min_score=_number(entry["min_score"]), calibrated=_flag(entry["calibrated"]),
                      instances=_count(entry["instances"]), precision=_optional_number(entry.get("precision")),
                      recall=_optional_number(entry.get("recall")), note=str(entry.get("note", "")))


def _number(value: Any) -> float:
    """A finite JSON number (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count (a non-negative integer), got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
