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

import sys
import time
from pathlib import Path

import click

from ecm_edge.cli.main import info
from ecm_edge.cli.options import config_options, renamed_option, resolve_config
from ecm_edge.runtime.extract import (
    SPLIT_CHOICES,
    VideoResult,
    assign_splits,
    extract_dataset,
    find_videos,
    has_features,
)
from ecm_edge.runtime.extractors import (
    EXTRACTORS,
    FeatureExtractor,
    create_extractor,
)


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
@renamed_option("--engine", "--backend", "engine", type=click.Choice(["auto", "onnxruntime", "tensorrt"]),
                default="auto", show_default=True,
                help="i3d: inference engine (auto: by the artifact's suffix, .onnx or .engine).")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default="auto", show_default=True,
              help="Put all videos in one split folder, place them by OUT/split_*.txt (auto), or flat (none).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Snippets per extractor call.")
@click.option("--overwrite", is_flag=True, help="Re-extract videos whose feature files exist.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@config_options(default="thumos14")
def extract(inputs: tuple[Path, ...], out_dir: Path, extractor: str, backbone_artifact: Path | None,
            flow_artifact: Path | None, engine: str, split: str, batch_size: int, overwrite: bool,
            progress: bool | None, config_name: str, overrides: tuple[str, ...]) -> None:
    """Extract features from video files (INPUTS: files or folders of videos) into a dataset folder."""
    cfg = resolve_config(config_name, overrides)
    videos = find_videos(inputs)
    jobs = assign_splits(videos, out_dir, split)
    model = build_extractor(extractor, backbone_artifact, flow_artifact, engine, batch_size)
    skipped = sum(has_features(out_dir, job, model) for job in jobs) if not overwrite else 0
    if skipped:
        info(f"{skipped} of {len(jobs)} videos already have features (use --overwrite to redo them)")
    started = time.perf_counter()
    results, skipped = extract_dataset(jobs, out_dir, model, cfg, batch_size=batch_size, overwrite=overwrite,
                                       show=sys.stderr.isatty() if progress is None else progress)
    report(out_dir, model, results, skipped, time.perf_counter() - started)


def build_extractor(name: str, artifact: Path | None, flow_artifact: Path | None, engine: str,
                    batch_size: int) -> FeatureExtractor:
    if name == "i3d":
        return create_extractor("i3d", artifact=artifact, flow_artifact=flow_artifact, engine=engine,
                                batch_size=batch_size)
    if artifact is not None or flow_artifact is not None:
        raise click.UsageError(f"--backbone-artifact/--flow-artifact are for --extractor i3d, not {name}")
    return create_extractor(name)


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

