"""``ecm-edge extract VIDEO_OR_DIR... -o DATASET_DIR --extractor tiny|i3d``: snippet features from video files.

Frames go through exactly the path ``ecm-edge stream`` uses (:func:`~ecm_edge.runtime.sources.open_source` →
:class:`~ecm_edge.runtime.snippets.SnippetAssembler` → the registered extractor), so features made here for
training match the features the deployed model sees. Output, in the dataset layout the trainer reads:

- ``--split train|test``: ``DIR/features/<split>/<modality>/<video>.npy``, one ``[T, D_m]`` file per modality;
- ``--split auto`` (default): the same, each video in the split whose ``DIR/split_<split>.txt`` lists it, or,
  without split files, the flat layout;
- ``--split none``: ``DIR/features/<video>.npy`` with all modalities concatenated.

Each file is written atomically; a video whose files exist is skipped unless ``--overwrite`` (so an interrupted
run resumes). ``DIR/extract.json`` records the extractor and each video's snippet count and frame rate.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ecm_edge.cli.options import config_options, resolve_config
from ecm_edge.config import Config
from ecm_edge.errors import DataError
from ecm_edge.io import atomic_path, atomic_write_json
from ecm_edge.runtime.extractors import (
    EXTRACTORS,
    FeatureExtractor,
    assembler_for,
    create_extractor,
    iter_source_features,
)
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


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder; features go to OUT/features/.")
@click.option("--extractor", type=click.Choice(sorted(EXTRACTORS)), default="tiny", show_default=True,
              help="Feature extractor: tiny (no file needed) or i3d (an exported I3D ONNX).")
@click.option("--backbone-artifact", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="i3d: the exported RGB network (.onnx or .engine, from `ecm-edge export --backbone i3d`).")
@click.option("--flow-artifact", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="i3d: the exported flow network; adds 1024 flow channels from OpenCV Farneback optical flow "
                   "(an approximation of TV-L1).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True, help="i3d: runtime backend (auto: by the artifact's suffix, .onnx or .engine).")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="auto", show_default=True,
              help="Put all videos in one split folder, place them by OUT/split_*.txt (auto), or flat (none).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Snippets per extractor call.")
@click.option("--overwrite", is_flag=True, help="Re-extract videos whose feature files exist.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@config_options(default="thumos14")
def extract(inputs: tuple[Path, ...], out_dir: Path, extractor: str, backbone_artifact: Path | None,
            flow_artifact: Path | None, backend: str, split: str, batch_size: int, overwrite: bool,
            progress: bool | None, config_name: str, overrides: tuple[str, ...]) -> None:
    """Extract features from video files (INPUTS: files or folders of videos) into a dataset folder."""
    cfg = resolve_config(config_name, overrides)
    videos = find_videos(inputs)
    jobs = assign_splits(videos, out_dir, split)
    model = build_extractor(extractor, backbone_artifact, flow_artifact, backend, batch_size)
    skipped = sum(_has_features(out_dir, job, model) for job in jobs) if not overwrite else 0
    if skipped:
        click.echo(f"{skipped} of {len(jobs)} videos already have features (use --overwrite to redo them)", err=True)
    started = time.perf_counter()
    results, skipped = extract_dataset(jobs, out_dir, model, cfg, batch_size=batch_size, overwrite=overwrite,
                                       show=sys.stderr.isatty() if progress is None else progress)
    report(out_dir, model, results, skipped, time.perf_counter() - started)


def extract_dataset(jobs: list[VideoJob], out_dir: Path, extractor: FeatureExtractor, cfg: Config, *,
                    batch_size: int = 8, overwrite: bool = False,
                    show: bool = False) -> tuple[list[VideoResult], int]:
    """Write the features of ``jobs`` into the dataset folder ``out_dir`` and merge ``extract.json``.

    Videos whose feature files exist are skipped unless ``overwrite``. Returns (the videos extracted now, the
    number skipped). The library form of ``ecm-edge extract``, also used by ``ecm-edge demo``.
    """
    todo = [job for job in jobs if overwrite or not _has_features(out_dir, job, extractor)]
    results = run_jobs(todo, out_dir, extractor, cfg, batch_size, show=show)
    write_metadata(out_dir, extractor, jobs, results)
    return results, len(jobs) - len(todo)


def _has_features(out_dir: Path, job: VideoJob, extractor: FeatureExtractor) -> bool:
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


def build_extractor(name: str, artifact: Path | None, flow_artifact: Path | None, backend: str,
                    batch_size: int) -> FeatureExtractor:
    if name == "i3d":
        return create_extractor("i3d", artifact=artifact, flow_artifact=flow_artifact, backend=backend,
                                batch_size=batch_size)
    if artifact is not None or flow_artifact is not None:
        raise click.UsageError(f"--backbone-artifact/--flow-artifact are for --extractor i3d, not {name}")
    return create_extractor(name)


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


def report(out_dir: Path, extractor: FeatureExtractor, results: list[VideoResult], skipped: int,
           elapsed: float) -> None:
    snippets = sum(r.snippets for r in results)
    seconds = sum(r.seconds for r in results)
    rate = snippets / elapsed if elapsed > 0 else float("inf")
    speed = seconds / elapsed if elapsed > 0 else float("inf")
    channels = " + ".join(f"{m} {d}" for m, d in extractor.modalities)
    click.echo(f"extracted {len(results)} video(s), {snippets} snippets ({seconds:.0f} s of video) with {extractor.name} "
               f"in {elapsed:.1f} s ({rate:.1f} snippets/s, {speed:.1f}x real time); D = {extractor.dim} ({channels})"
               + (f"; {skipped} skipped" if skipped else ""))
    click.echo(f"  features: {out_dir / 'features'}")
    modalities = ", ".join(m for m, _ in extractor.modalities)
    click.echo(f"next: ecm-edge train --data {out_dir} --set data.feature_dim={extractor.dim} "
               f"--set 'data.modalities=[{modalities}]'")

