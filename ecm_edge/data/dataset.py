"""A dataset of snippet features with video-level labels: one split of a dataset directory.

Layout (docs/design.md §4)::

    DIR/gt.json              annotations (ActivityNet-style; or the W-TALC arrays in DIR)
    DIR/split_<split>.txt    the video ids of the split (else the annotations' subset of that name)
    DIR/features/...         the features, in any layout of :mod:`ecm_edge.data.features`

Time: one snippet lasts ``data.snippet_frames / data.feature_fps`` = 0.64 s. A video whose annotation has no
``duration`` lasts T·0.64 s; one without ``fps`` is taken at ``data.default_fps`` (25).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ecm_edge.config import Config
from ecm_edge.data.annotations import (
    Annotations,
    load_activitynet_json,
    load_wtalc_reduced,
    read_split,
)
from ecm_edge.data.features import WTALC_NAMES_FILE, FeatureStore, open_feature_store
from ecm_edge.errors import DataError

logger = logging.getLogger("ecm_edge")

SPLITS = ("train", "test")
# Subset names in annotation files that mean "training videos" (the W-TALC layout trains on THUMOS14's
# validation videos and calls them so).
_SUBSETS_OF_SPLIT = {"train": ("train", "training", "validation"), "test": ("test", "testing")}


class FeatureCache:
    """Least-recently-used cache of decoded feature arrays, bounded by their total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict:
        # Worker processes start with an empty cache of the same size instead of a pickled copy of it.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])


class VideoDataset:
    """The videos of one split: their features ``[T, D]``, multi-hot labels ``[C]`` and timing.

    Open it with :meth:`open`; :meth:`subset_ids` restricts it (e.g. to a held-out part) while sharing the
    feature store and cache.
    """

    def __init__(self, data_dir: Path, split: str, video_ids: list[str], annotations: Annotations,
                 store: FeatureStore, cfg: Config, cache: FeatureCache | None = None):
        self.data_dir = Path(data_dir)
        self.split = split
        self.video_ids = list(video_ids)
        self.annotations = annotations
        self.class_names = list(annotations.class_names)
        self.store = store
        self.cfg = cfg
        self.cache = cache if cache is not None else FeatureCache(cfg.data.cache_mb * 2**20)
        self._lengths: dict[str, int] = {}

    @classmethod
    def open(cls, data_dir: str | Path, cfg: Config, split: str) -> VideoDataset:
        """split: "train" | "test" (reads DIR/split_<split>.txt and DIR/gt.json; features from DIR/features)."""
        data_dir = Path(data_dir)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if not data_dir.is_dir():
            raise DataError(f"dataset folder {data_dir} does not exist; create one with "
                            f"`ecm-edge synth --preset small -o {data_dir}` or point --data at your features")
        all_annotations = read_dataset_annotations(data_dir)
        video_ids = split_video_ids(data_dir, split, all_annotations)
        if not video_ids:
            raise DataError(f"split {split!r} of {data_dir} names no videos")
        annotations = all_annotations.select(video_ids)
        store = open_feature_store(data_dir, cfg.data.feature_dim, cfg.data.modalities)
        missing = store.missing(video_ids)
        if missing:
            raise DataError(f"{len(missing)} of {len(video_ids)} {split} video(s) of {data_dir} have no features, "
                            f"e.g. {missing[0]!r} (looked for {store.describe(missing[0])})")
        logger.debug("opened %s split of %s: %d videos, %d classes, %s features", split, data_dir, len(video_ids),
                     len(annotations.class_names), store.layout)
        return cls(data_dir, split, video_ids, annotations, store, cfg)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.video_ids)

    def __repr__(self) -> str:
        return (f"VideoDataset({str(self.data_dir)!r}, split={self.split!r}, videos={len(self)}, "
                f"classes={len(self.class_names)}, layout={self.store.layout!r})")

    def _check_member(self, video_id: str) -> None:
        if video_id not in self.annotations.videos:
            raise DataError(f"video {video_id!r} is not part of the {self.split} split of {self.data_dir}")

    def features(self, video_id: str) -> np.ndarray:
        """``[T, D]`` float32, validated (dimension, finite values, at least one snippet). Read-only."""
        self._check_member(video_id)
        cached = self.cache.get(video_id)
        if cached is not None:
            return cached
        features = self.store.read(video_id)
        features.setflags(write=False)
        self._lengths[video_id] = features.shape[0]
        self.cache.put(video_id, features)
        return features

    def labels(self, video_id: str) -> np.ndarray:
        """Multi-hot video label ``[C]`` float32 in the order of :attr:`class_names`."""
        self._check_member(video_id)
        return self.annotations.multi_hot(video_id)

    def num_snippets(self, video_id: str) -> int:
        """T of the stored features (read from the file header, not the data)."""
        self._check_member(video_id)
        if video_id not in self._lengths:
            self._lengths[video_id] = self.store.num_snippets(video_id)
        return self._lengths[video_id]

    def fps(self, video_id: str) -> float:
        """Frame rate of the source video: the annotation's, else ``data.default_fps``."""
        self._check_member(video_id)
        fps = self.annotations.videos[video_id].fps
        return float(fps) if fps else float(self.cfg.data.default_fps)

    def duration(self, video_id: str) -> float:
        """Seconds: the annotation's duration, else T · 0.64 s."""
        self._check_member(video_id)
        duration = self.annotations.videos[video_id].duration
        if duration:
            return float(duration)
        return self.num_snippets(video_id) * self.cfg.data.snippet_seconds

    def num_frames(self, video_id: str) -> int:
        """Frames of the source video, ``round(duration · fps)`` (at least 1)."""
        return max(1, round(self.duration(video_id) * self.fps(video_id)))

    def video_classes(self) -> dict[str, list[str]]:
        """Class names present in each video (for class-aware splitting)."""
        return {vid: self.annotations.videos[vid].classes for vid in self.video_ids}

    def subset_ids(self, video_ids: list[str]) -> VideoDataset:
        """The same dataset restricted to ``video_ids`` (in that order); shares the store and the cache."""
        ids = list(video_ids)
        unknown = [v for v in ids if v not in self.annotations.videos]
        if unknown:
            raise DataError(f"{len(unknown)} video(s) are not in the {self.split} split of {self.data_dir}, "
                            f"e.g. {unknown[0]!r}")
        subset = VideoDataset(self.data_dir, self.split, ids, self.annotations.select(ids), self.store, self.cfg,
                              self.cache)
        subset._lengths = self._lengths
        return subset

    def holdout(self, fraction: float, seed: int) -> tuple[VideoDataset, VideoDataset]:
        """(training part, held-out part), split by :func:`split_holdout` with every class kept in training."""
        train_ids, val_ids = split_holdout(self.video_ids, fraction, seed, labels=self.video_classes())
        return self.subset_ids(train_ids), self.subset_ids(val_ids)


def read_dataset_annotations(data_dir: Path) -> Annotations:
    """``DIR/gt.json``, else the W-TALC arrays in ``DIR``; class names sorted over all subsets."""
    if (data_dir / "gt.json").is_file():
        return load_activitynet_json(data_dir / "gt.json")
    if (data_dir / WTALC_NAMES_FILE).is_file():
        return load_wtalc_reduced(data_dir)
    raise DataError(f"{data_dir} has no annotations: expected {data_dir / 'gt.json'} (ActivityNet-style JSON) "
                    f"or the W-TALC arrays ({WTALC_NAMES_FILE}, segments.npy, labels.npy, ...)")


def split_video_ids(data_dir: Path, split: str, annotations: Annotations) -> list[str]:
    """``DIR/split_<split>.txt`` if present, else the annotated videos whose subset means ``split``."""
    split_file = data_dir / f"split_{split}.txt"
    if split_file.is_file():
        ids = read_split(split_file)
        unknown = [v for v in ids if v not in annotations.videos]
        if unknown:
            raise DataError(f"{split_file}: {len(unknown)} video(s) have no annotation in {data_dir}, "
                            f"e.g. {unknown[0]!r}")
        return ids
    subsets = _SUBSETS_OF_SPLIT[split]
    ids = [vid for vid, v in annotations.videos.items() if v.subset in subsets]
    if not ids:
        raise DataError(f"{data_dir} has no {split_file.name} and no annotated video with subset "
                        f"{' / '.join(subsets)}")
    return sorted(ids)


def _bins(length: int, t_fixed: int) -> np.ndarray:
    """Start of each of ``t_fixed`` uniform bins over ``[0, length)``, as the reference computes them."""
    return np.arange(t_fixed) * length / t_fixed


def sample_indices(length: int, t_fixed: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The ``t_fixed`` snippet indices :func:`resample_features` takes from a video of ``length`` snippets."""
    if length < 1 or t_fixed < 1:
        raise DataError(f"cannot resample {length} snippet(s) to {t_fixed}; both must be at least 1")
    if length == t_fixed:
        return np.arange(t_fixed)
    starts = _bins(length, t_fixed)
    low = np.floor(starts).astype(np.int64)
    if rng is None or length < t_fixed:
        return low
    high = np.empty_like(low)
    high[:-1] = np.floor(starts[1:]).astype(np.int64)  # inclusive, as in the reference
    high[-1] = length - 1
    return rng.integers(low, high + 1)


def resample_features(features: np.ndarray, t_fixed: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """[T, D] -> [t_fixed, D]. rng given: random perturbation within uniform bins (training); None: uniform
    sampling (testing). Works for T = 1 and T < t_fixed (indices repeat).

    This is the sampling of the BaS-Net / UM / CoLA / ECM code line. The snippets are cut into ``t_fixed``
    uniform bins starting at ``i·T/t_fixed``; testing takes each bin's first index ``floor(i·T/t_fixed)``;
    training draws one index per bin uniformly from ``floor(i·T/t_fixed) .. floor((i+1)·T/t_fixed)`` (both ends
    inclusive, as the reference does, so neighbouring bins can pick their shared boundary snippet; the last bin
    reaches ``T − 1``). When ``T < t_fixed`` both use the uniform mapping, so snippets repeat in order (the
    reference's perturbation there only moves an occasional repeated index by one); ``T == t_fixed`` is the
    identity.
    """
    if features.ndim != 2:
        raise DataError(f"resample_features expects [T, D] features, got shape {features.shape}")
    return features[sample_indices(features.shape[0], t_fixed, rng)]


def split_holdout(video_ids: list[str], fraction: float, seed: int,
                  labels: Mapping[str, Sequence[str]] | None = None) -> tuple[list[str], list[str]]:
    """Deterministic (train_ids, val_ids); every class keeps at least one training video where possible.

    ``round(fraction · N)`` videos are held out, drawn in a seeded random order of the sorted ids (so the result
    depends on the set of ids, the fraction and the seed only). With ``labels`` (video → class names), a video
    is held out only if each of its classes still has another training video; fewer videos are held out when
    that rule leaves no other choice. Both lists keep the order of ``video_ids``.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"hold-out fraction must be in [0, 1), got {fraction}")
    ids = list(video_ids)
    if len(set(ids)) != len(ids):
        raise DataError("split_holdout: video ids must be unique")
    wanted = round(fraction * len(ids))
    if wanted == 0:
        return ids, []
    order = np.random.default_rng(seed).permutation(len(ids))
    candidates = [sorted(ids)[i] for i in order]
    train_count: dict[str, int] = {}
    for vid in ids:
        for name in set(labels.get(vid, ())) if labels else ():
            train_count[name] = train_count.get(name, 0) + 1
    held: set[str] = set()
    for vid in candidates:
        if len(held) == wanted:
            break
        classes = set(labels.get(vid, ())) if labels else set()
        if all(train_count[c] > 1 for c in classes):
            held.add(vid)
            for c in classes:
                train_count[c] -= 1
    if len(held) < wanted:
        logger.info("held out %d of the requested %d videos so that every class keeps a training video",
                    len(held), wanted)
    return [v for v in ids if v not in held], [v for v in ids if v in held]
