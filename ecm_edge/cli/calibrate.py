"""``ecm-edge calibrate``: per-class alert operating points of a trained run, chosen on held-out videos.

Runs without torch (the stream runs the deploy weights on the numpy head); ``ecm_edge.calibration`` does the work,
this module parses the options, shows progress and prints the table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ecm_edge.cli.main import info
from ecm_edge.cli.options import config_options, progress_factory

PERCENT = 100.0


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="Training run folder (runs/train/NAME, with model.safetensors + model.json).")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="The dataset the run was trained on (gt.json, split_*.txt, features/).")
@click.option("--precision", "target", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Target precision per class on the held-out videos (default: alerts.precision, 0.8).")
@click.option("--tiou", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Temporal IoU at which a segment matches an instance (default: alerts.tiou, 0.5).")
@click.option("--split", type=click.Choice(["val", "train", "test"]), default=None,
              help="Videos to choose the points on (default: val, the training videos the run held out; the "
                   "training split, with a warning, when it held none out).")
@config_options(default=None)
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def calibrate(checkpoint: Path, data_dir: Path, target: float | None, tiou: float | None, split: str | None,
              config_name: str | None, overrides: tuple[str, ...], progress: bool | None) -> None:
    """Choose each class's alert threshold for a target precision and measure it on the test split.

    Streams the held-out videos through the run's model (as `ecm-edge stream` would), matches the segments to
    the ground truth, and picks per class the lowest score whose precision reaches the target; classes with too
    few held-out instances (alerts.min_instances) or that never reach it get the global point. Writes
    RUN/operating_points.json, which `ecm-edge export` copies beside the artifacts.

    \b
    Examples:
      ecm-edge calibrate --checkpoint runs/train/exp --data data/small
      ecm-edge calibrate --checkpoint runs/train/exp --data data/small --precision 0.9 --tiou 0.3
    """
    result = run_calibration(checkpoint, data_dir, target=target, tiou=tiou, split=split, config=config_name,
                             overrides=overrides, progress=progress)
    click.echo(format_points_table(result.points))
    click.echo(f"operating points written to {result.path}")
    click.echo(f"next: ecm-edge export --checkpoint {result.path.parent} (the export carries them)")


def run_calibration(checkpoint: Path, data_dir: Path, *, target: float | None = None, tiou: float | None = None,
                    split: str | None = None, config: str | None = None, overrides: Sequence[str] = (),
                    progress: bool | None = None) -> Any:
    """:func:`ecm_edge.calibration.calibrate_run` with the CLI's options as config overrides and tqdm bars."""
    from ecm_edge.calibration import calibrate_run

    extra = []
    if target is not None:
        extra.append(f"alerts.precision={target}")
    if tiou is not None:
        extra.append(f"alerts.tiou={tiou}")
    info(f"calibrating operating points of {checkpoint} on {data_dir}")
    show = sys.stderr.isatty() if progress is None else progress
    return calibrate_run(checkpoint, data_dir, split=split, config=config, overrides=[*overrides, *extra],
                         progress=progress_factory(show))




def format_points_table(points: Any) -> str:
    """A markdown table: per class the held-out point (score, instances, own or global), the test precision,
    recall and false alerts per hour; then the global point and the overall test row."""
    test = points.test or {}
    rows = test.get("classes", {})
    lines = [f"operating points for precision {points.target_precision:.2f} at tIoU {points.tiou:.2f}, chosen on "
             f"the {points.split} split" + ("" if test else " (no test split: no test figures)"),
             "| class | min score | held-out instances | point | held-out precision | test precision | "
             "test recall | false alerts / h |",
             "|---|---|---|---|---|---|---|---|"]
    for label, point in points.classes.items():
        kind = "own" if point.calibrated else f"global: {point.note}"
        lines.append(_row(label, point, kind, rows.get(label)))
    if points.global_point is not None:
        pooled = points.global_point
        kind = "pooled" if pooled.calibrated else f"pooled: {pooled.note}"
        lines.append(_row("all classes", pooled, kind, test.get("overall")))
    return "\n".join(lines)


def _row(label: str, point: Any, kind: str, test_row: dict[str, Any] | None) -> str:
    figures = ["-", "-", "-"]
    if test_row is not None:
        per_hour = test_row.get("false_alerts_per_hour")
        figures = [_percent(test_row.get("precision")), _percent(test_row.get("recall")),
                   "-" if per_hour is None else f"{per_hour:.1f}"]
    cells = [label, f"{point.min_score:.4f}", str(point.instances), kind, _percent(point.precision), *figures]
    return "| " + " | ".join(cells) + " |"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{PERCENT * value:.1f} %"
