"""Snippet features from video files, written in the dataset layout (the library side of ``ecm-edge extract``).

Frames go through exactly the path ``ecm-edge stream`` uses (:func:`~ecm_edge.runtime.sources.open_source` →
:class:`~ecm_edge.runtime.snippets.SnippetAssembler` → the registered extractor), so features made here for
training match the features the deployed model sees. Output, in the dataset layout the trainer reads:

- ``split= train|test``: ``DIR/features/<split>/<modality>/<video>.npy``, one ``[T, D_m]`` file per modality;
- ``split= auto`` (the CLI default): the same, each video in the split whose ``DIR/split_<split>.txt`` lists it, or,
  without split files, the flat layout;
- ``split= none``: ``DIR/features/<video>.npy`` with all modalities concatenated.

Each file is written atomically; a video whose files exist is skipped unless ``overwrite`` (so an interrupted
run resumes). ``DIR/extract.json`` records the extractor and each video's snippet count and frame rate.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecm_edge.config import Config
from ecm_edge.errors import DataError
from ecm_edge.io import atomic_path, atomic_write_json
from ecm_edge.runtime.extractors import FeatureExtractor, assembler_for, iter_source_features
from ecm_edge.runtime.sources import open_source

logger = logging.getLogger("ecm_edge")

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".ts")
SPLIT_CHOICES = ("auto", "train", "test", "none")
DATASET_SPLITS = ("train", "test")
META_NAME = "extract.json"


@dataclass
class VideoJob:
    video_id: str
    path: Path
    split: str | None  # None: flat layout


@dataclass
class VideoResult:
    video_id: str
    snippets: int
    seconds: float
    fps: float | None


def extract_dataset(jobs: list[VideoJob], out_dir: Path, extractor: FeatureExtractor, cfg: Config, *,
                    batch_size: int = 8, overwrite: bool = False,
                    show: bool = False) -> tuple[list[VideoResult], int]:
    """Write the features of ``jobs`` into the dataset folder ``out_dir`` and merge ``extract.json``.

    Videos whose feature files exist are skipped unless ``overwrite``. Returns (the videos extracted now, the
    number skipped). The library form of ``ecm-edge extract``, also used by ``ecm-edge demo``.
    """
    todo = [job for job in jobs if overwrite or not has_features(out_dir, job, extractor)]
    results = run_jobs(todo, out_dir, extractor, cfg, batch_size, show=show)
    write_metadata(out_dir, extractor, jobs, results)
    return results, len(jobs) - len(todo)


def has_features(out_dir: Path, job: VideoJob, extractor: FeatureExtractor) -> bool:
    return all(p.is_file() for p in output_paths(out_dir, job, extractor))


def find_videos(inputs: tuple[Path, ...]) -> list[Path]:
    """Video files named directly or found (non-recursively) in the given folders, in sorted order."""
    videos: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{item} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
            videos += found
        else:
            videos.append(item)
    stems: dict[str, Path] = {}
    for path in videos:
        if path.stem in stems and stems[path.stem] != path:
            raise DataError(f"two videos share the id {path.stem!r} ({stems[path.stem]} and {path}); feature files "
                            "are named by video id, so rename one")
        stems[path.stem] = path
    return list(dict.fromkeys(videos))


def assign_splits(videos: list[Path], out_dir: Path, split: str) -> list[VideoJob]:
    """The split folder of each video under the ``--split`` rule (see the module doc)."""
    if split in DATASET_SPLITS:
        return [VideoJob(p.stem, p, split) for p in videos]
    split_files = {s: out_dir / f"split_{s}.txt" for s in DATASET_SPLITS}
    if split == "none" or not any(f.is_file() for f in split_files.values()):
        return [VideoJob(p.stem, p, None) for p in videos]
    member = {}
    for name, file in split_files.items():
        if file.is_file():
            member.update({line.strip(): name for line in file.read_text().splitlines() if line.strip()})
    unlisted = [p.stem for p in videos if p.stem not in member]
    if unlisted:
        raise DataError(f"{len(unlisted)} video(s) are in no split file of {out_dir} (e.g. {unlisted[0]!r}); "
                        "pass --split train or --split test to put all videos in one split, or --split none")
    return [VideoJob(p.stem, p, member[p.stem]) for p in videos]


def output_paths(out_dir: Path, job: VideoJob, extractor: FeatureExtractor) -> list[Path]:
    root = out_dir / "features"
    if job.split is None:
        return [root / f"{job.video_id}.npy"]
    return [root / job.split / modality / f"{job.video_id}.npy" for modality, _ in extractor.modalities]


def extract_video(path: Path, extractor: FeatureExtractor, cfg: Config, batch_size: int,
                  on_snippets=None) -> tuple[np.ndarray, float | None]:
    """Features ``[T, D]`` of one video file and its nominal frame rate, through the streaming path."""
    source = open_source(path, policy="all", config=cfg.stream)
    try:
        chunks = []
        for features, snippets in iter_source_features(source, extractor,
                                                       assembler=assembler_for(extractor, cfg.data, cfg.stream),
                                                       batch_size=batch_size):
            chunks.append(features)
            if on_snippets is not None:
                on_snippets(snippets)
    finally:
        source.close()
    features = np.concatenate(chunks) if chunks else np.zeros((0, extractor.dim), np.float32)
    return features, source.fps


def save_features(out_dir: Path, job: VideoJob, extractor: FeatureExtractor, features: np.ndarray) -> None:
    paths = output_paths(out_dir, job, extractor)
    if job.split is None:
        parts = [features]
    else:
        bounds = np.cumsum([0] + [d for _, d in extractor.modalities])
        parts = [features[:, a:b] for a, b in itertools.pairwise(bounds)]
    for path, part in zip(paths, parts, strict=True):
        with atomic_path(path) as tmp:
            np.save(tmp, np.ascontiguousarray(part, dtype=np.float32))


def run_jobs(jobs: list[VideoJob], out_dir: Path, extractor: FeatureExtractor, cfg: Config, batch_size: int,
             show: bool) -> list[VideoResult]:
    from tqdm import tqdm

    results = []
    with tqdm(total=len(jobs), unit="video", desc="extract", disable=not show) as bar:
        for job in jobs:
            bar.set_postfix_str(job.video_id)
            features, fps = extract_video(job.path, extractor, cfg, batch_size, on_snippets=_show_position(bar, job))
            if len(features) == 0:
                logger.warning("%s is shorter than one snippet (%.2f s); no features written", job.path,
                               cfg.data.snippet_seconds)
            else:
                save_features(out_dir, job, extractor, features)
                results.append(VideoResult(job.video_id, len(features), len(features) * cfg.data.snippet_seconds, fps))
            bar.update(1)
    return results


def _show_position(bar, job: VideoJob):
    def show(snippets) -> None:
        bar.set_postfix_str(f"{job.video_id} {snippets[-1].end_time:.0f} s")

    return show


def write_metadata(out_dir: Path, extractor: FeatureExtractor, jobs: list[VideoJob],
                   results: list[VideoResult]) -> None:
    """Merge this run into ``OUT/extract.json`` (extractor, channels, per-video snippets and frame rate)."""
    path = out_dir / META_NAME
    meta = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            logger.warning("%s is unreadable; rewriting it", path)
    splits = {job.video_id: job.split for job in jobs}
    videos = meta.get("videos", {}) if meta.get("extractor") == extractor.name else {}
    for result in results:
        videos[result.video_id] = {"snippets": result.snippets, "source_fps": result.fps,
                                   "split": splits[result.video_id]}
    atomic_write_json(path, {"extractor": extractor.name, "dim": extractor.dim,
                             "modalities": {m: d for m, d in extractor.modalities}, "videos": videos})
