"""Raw predictions: the network's outputs for a set of videos, kept so post-processing can be re-run alone.

``ecm-edge predict --save-raw`` writes them, ``ecm-edge postprocess`` reads them: thresholds and modes are
tuned in seconds, without the network. One ``.npz`` file (no pickles) with the keys

- ``video_ids`` [N] str, ``class_names`` [C] str
- ``cas`` float32 [N, C, Tmax]: raw CAS logits, zero-padded after each video's length
- ``lengths`` int64 [N]: valid snippets per video
- ``video_scores`` float [N, C]: softmax of the pre-stream score
- ``num_frames`` int64 [N], ``fps`` float64 [N], ``duration`` float64 [N] (seconds)
- optional ``weights`` float32 [N, C, Tmax]: the weight-transition module's foreground weights

:func:`detections_from_raw` post-processes them (docs/design.md §5) into ActivityNet results: the one offline
path from network outputs to detections, shared by ``predict``, ``eval``, ``postprocess``, the trainer's
evaluation, the export's validation and the benchmarks. torch-free.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecm_edge.errors import DataError
from ecm_edge.io import atomic_path

if TYPE_CHECKING:
    from ecm_edge.config import Config

REQUIRED_KEYS = ("video_ids", "cas", "lengths", "video_scores", "num_frames", "fps", "duration", "class_names")
OPTIONAL_KEYS = ("weights",)


@dataclass
class RawPredictions:
    video_ids: list[str]
    cas: np.ndarray  # float32 [N, C, Tmax], zero-padded
    lengths: np.ndarray  # int64 [N]
    video_scores: np.ndarray  # float [N, C]
    num_frames: np.ndarray  # int64 [N]
    fps: np.ndarray  # float64 [N]
    duration: np.ndarray  # float64 [N], seconds
    class_names: list[str]
    weights: np.ndarray | None = None  # float32 [N, C, Tmax] or None

    def __post_init__(self) -> None:
        self.video_ids = [str(v) for v in self.video_ids]
        self.class_names = [str(c) for c in self.class_names]
        self.cas = np.asarray(self.cas, dtype=np.float32)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.video_scores = np.asarray(self.video_scores)
        self.num_frames = np.asarray(self.num_frames, dtype=np.int64)
        self.fps = np.asarray(self.fps, dtype=np.float64)
        self.duration = np.asarray(self.duration, dtype=np.float64)
        if self.weights is not None:
            self.weights = np.asarray(self.weights, dtype=np.float32)
        self.check()

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    def check(self, source: str = "raw predictions") -> None:
        """Raise :class:`DataError` naming ``source`` and the key when a shape disagrees with the others."""
        n, c = len(self.video_ids), len(self.class_names)
        if self.cas.ndim != 3 or self.cas.shape[:2] != (n, c):
            raise DataError(f"{source}: cas must be [N, C, T] = [{n}, {c}, T] (N video ids, C class names), "
                            f"got {list(self.cas.shape)}")
        expected = {"lengths": (n,), "video_scores": (n, c), "num_frames": (n,), "fps": (n,), "duration": (n,)}
        for key, shape in expected.items():
            if getattr(self, key).shape != shape:
                raise DataError(f"{source}: {key} must have shape {list(shape)}, got {list(getattr(self, key).shape)}")
        if self.weights is not None and self.weights.shape != self.cas.shape:
            raise DataError(f"{source}: weights must have the shape of cas {list(self.cas.shape)}, "
                            f"got {list(self.weights.shape)}")
        bad = np.flatnonzero((self.lengths < 1) | (self.lengths > self.cas.shape[2]))
        if bad.size:
            raise DataError(f"{source}: video {self.video_ids[bad[0]]!r} has length {self.lengths[bad[0]]}, "
                            f"outside [1, {self.cas.shape[2]}]")

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` atomically (a temporary file renamed into place)."""
        path = Path(path)
        arrays = {"video_ids": np.array(self.video_ids, dtype=str), "cas": self.cas, "lengths": self.lengths,
                  "video_scores": self.video_scores, "num_frames": self.num_frames, "fps": self.fps,
                  "duration": self.duration, "class_names": np.array(self.class_names, dtype=str)}
        if self.weights is not None:
            arrays["weights"] = self.weights
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RawPredictions:
        """Read a raw-prediction ``.npz``; a missing key or a bad shape is a :class:`DataError` naming the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"raw prediction file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in REQUIRED_KEYS if k not in archive.files]
                if missing:
                    raise DataError(f"{path} lacks {', '.join(missing)}; a raw prediction file holds "
                                    f"{', '.join(REQUIRED_KEYS)} (write one with --save-raw)")
                arrays = {k: archive[k] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if k in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path} is not a readable .npz file: {exc}") from None
        for key in ("video_ids", "class_names"):
            if arrays[key].ndim != 1:
                raise DataError(f"{path}: {key} must be a 1-D array of names, got shape {list(arrays[key].shape)}")
        try:
            return cls(video_ids=arrays["video_ids"].tolist(), cas=arrays["cas"], lengths=arrays["lengths"],
                       video_scores=arrays["video_scores"], num_frames=arrays["num_frames"], fps=arrays["fps"],
                       duration=arrays["duration"], class_names=arrays["class_names"].tolist(),
                       weights=arrays.get("weights"))
        except DataError as exc:
            raise DataError(str(exc).replace("raw predictions", str(path), 1)) from None


def detections_from_raw(raw: RawPredictions, cfg: Config, source_name: str = "these raw predictions", *,
                        kernels: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Post-process raw predictions (docs/design.md §5) with ``cfg.post`` into an ActivityNet results mapping
    (every video an entry), thresholding the rows ``cfg.post.score_source`` names; ``kernels`` (default
    ``cfg.post.kernels``) picks the post-processing kernels, ``source_name`` names the predictions in errors."""
    # imported here so that reading and writing raw predictions never loads the kernels
    from ecm_edge.evaluation import detections_to_results
    from ecm_edge.kernels.params import PostParams
    from ecm_edge.postprocess import localize_batch

    dets = localize_batch(raw.cas, raw.video_scores, lengths=raw.lengths, num_frames=raw.num_frames,
                          fps=raw.fps, duration=raw.duration, params=PostParams.from_config(cfg.post),
                          kernels=kernels or cfg.post.kernels, video_ids=raw.video_ids, weights=raw.weights,
                          score_source=cfg.post.score_source, source_name=source_name)
    return detections_to_results(dets, raw.video_ids, raw.class_names)
