"""``ecm-edge synth``: write a synthetic THUMOS14-like feature dataset (the embedded default data)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from ecm_edge.cli.synth_video import add_video_options, run_video_synth
from ecm_edge.data.synth import PRESETS, SyntheticVideo, SynthReport, SynthSettings, generate_dataset
from ecm_edge.errors import DataError


@click.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="small", show_default=True,
              help="small: 60 short videos, D=256 (tests, demo); thumos14: 200 + 210 videos, D=2048 (≈ 1 GB).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset folder to write (gt.json, split_*.txt, features/, synth.json).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same dataset, byte for byte.")
@click.option("--classes", "num_classes", type=click.IntRange(min=1), default=None,
              help="Number of action classes (default: the preset's, 20).")
@click.option("--dim", "feature_dim", type=click.IntRange(min=2), default=None,
              help="Feature channels D, even: D/2 per modality (default: the preset's).")
@click.option("--difficulty", type=click.FloatRange(0.0, 1.0), default=None,
              help="0 (clean) .. 1 (hard): noise, context distractors, non-action motion, class overlap. "
                   "Default: the preset's, 0.5.")
@click.option("--timeline", type=click.Path(exists=True, path_type=Path), default=None,
              help="Reproduce the instance layout of this annotation file (gt.json) or W-TALC folder.")
@click.option("--num-videos", type=click.IntRange(min=2), default=None,
              help="Number of videos, split train/test like the preset (with --timeline: a seeded pick).")
@click.option("--force", is_flag=True, help="Overwrite an existing synthetic dataset in OUTPUT.")
@add_video_options(skip=("num_videos", "num_classes", "force"))
def synth(preset: str, output: Path, seed: int, num_classes: int | None, feature_dim: int | None,
          difficulty: float | None, timeline: Path | None, num_videos: int | None, force: bool,
          videos: bool, size: tuple[int, int] | None, fps: float | None, duration: tuple[float, float] | None,
          codec: str | None) -> None:
    """Generate a THUMOS14-like feature dataset in the ecm-edge dataset layout (or, with --videos, video files).

    Class evidence ramps at the instance boundaries, context distractors sit just outside the instances,
    per-video background scenes, non-action motion and noise make it a weakly supervised localization problem;
    the timelines follow THUMOS14's statistics or, with --timeline, a real annotation file.
    """
    if videos:
        run_video_synth(output, seed=seed, num_videos=num_videos, num_classes=num_classes, size=size, fps=fps,
                        duration=duration, codec=codec, force=force)
        return
    settings = SynthSettings.from_preset(preset, seed=seed, num_classes=num_classes, feature_dim=feature_dim,
                                         difficulty=difficulty, num_videos=num_videos, timeline=timeline)
    prepare_output(output, force)
    total = None if settings.num_train is None else settings.num_train + (settings.num_test or 0)
    with _progress_bar(total) as bar:
        def advance(video: SyntheticVideo) -> None:
            bar.update(1)

        report = generate_dataset(output, settings, progress=advance)
    click.echo(f"wrote {report.num_train} train + {report.num_test} test videos ({report.num_instances} instances, "
               f"{report.num_snippets} snippets, D={settings.feature_dim}, {report.bytes_written / 2**20:.1f} MiB) "
               f"to {output} in {report.seconds:.1f} s; next: {next_command(preset, output, settings, report)}")
    if len(report.class_names) < settings.num_classes:
        click.echo(f"note: only {len(report.class_names)} of the {settings.num_classes} classes occur in "
                   f"{report.num_train + report.num_test} videos; the dataset's class list has those", err=True)


def prepare_output(output: Path, force: bool) -> None:
    """Refuse to write into a non-empty folder, unless it is a synthetic dataset and ``--force`` is given."""
    if not output.exists() or not any(output.iterdir()):
        return
    if not (output / "synth.json").is_file():
        raise DataError(f"{output} exists and is not empty; choose a new folder for the synthetic dataset")
    if not force:
        raise DataError(f"{output} already holds a synthetic dataset; pass --force to overwrite it")
    if (output / "features").is_dir():
        shutil.rmtree(output / "features")


def next_command(preset: str, output: Path, settings: SynthSettings, report: SynthReport) -> str:
    """The training command for the written dataset, with the overrides its size needs."""
    command = f"ecm-edge train --config {PRESETS[preset].config} --data {output}"
    if settings.feature_dim != PRESETS[preset].feature_dim:
        command += f" --set data.feature_dim={settings.feature_dim}"
    if len(report.class_names) != PRESETS[preset].num_classes:
        command += f" --set model.num_classes={len(report.class_names)}"
    return command


def _progress_bar(total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="video", disable=not sys.stderr.isatty(), leave=False)
