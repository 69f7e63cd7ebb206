"""``ecm-edge demo [-o demo] [--fresh] [--videos N] [--epochs N] [--seed S]``: the whole product in one command.

Generates procedural videos, extracts tiny-backbone features, trains ECM on video-level labels, evaluates on
held-out videos, exports fp32/fp16/int8 ONNX, streams one held-out video file through the runtime (printing
segments as they are emitted) and writes ``report.md`` and ``timeline.png``. See :mod:`ecm_edge.demo`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ecm_edge.cli.main import info
from ecm_edge.demo import STAGES, DemoOptions, StageResult, run_demo, summary_tables

_DEFAULTS = DemoOptions()


@click.command("demo")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=_DEFAULTS.out_dir,
              show_default=True, help="Folder that receives everything the demo writes.")
@click.option("--fresh", is_flag=True, help="Redo every stage, even those whose outputs exist.")
@click.option("--videos", "num_videos", type=click.IntRange(min=2), default=_DEFAULTS.num_videos, show_default=True,
              help="Procedural videos to generate (about a quarter held out for testing).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs [default: train.epochs of configs/demo.yaml].")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seed of the video set.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def demo(out_dir: Path, fresh: bool, num_videos: int, epochs: int | None, seed: int, progress: bool | None) -> None:
    """Raw video → localized actions on this machine, no data download, no GPU (a few minutes on a CPU)."""
    show = sys.stderr.isatty() if progress is None else progress
    ecm_logger = logging.getLogger("ecm_edge")
    level = ecm_logger.level
    if not ecm_logger.isEnabledFor(logging.DEBUG):
        ecm_logger.setLevel(logging.WARNING)  # one line per stage; per-epoch logs only with --debug
    options = DemoOptions(out_dir=out_dir, num_videos=num_videos, epochs=epochs, seed=seed, fresh=fresh,
                          progress=show)
    click.echo(f"ecm-edge demo → {out_dir} ({num_videos} videos, seed {seed}"
               f"{', fresh' if fresh else ''})")
    try:
        summary = run_demo(options, on_start=_announce if show else None, on_stage=_stage_line,
                           on_event=_event_line)
    finally:
        ecm_logger.setLevel(level)
    figures = {s.name: s.figures for s in summary.stages}
    click.echo("")
    click.echo(summary_tables(figures))
    click.echo("")
    reused = sum(s.reused for s in summary.stages)
    click.echo(f"done in {summary.seconds:.1f} s ({reused} of {len(STAGES)} stages reused); everything is in "
               f"{summary.out_dir}")
    click.echo(f"  report:   {summary.report}")
    click.echo(f"  timeline: {summary.timeline}")
    _next_commands(summary.out_dir, figures)


def _announce(name: str) -> None:
    index = STAGES.index(name) + 1
    info(f"[{index}/{len(STAGES)}] {name} ...")


def _stage_line(result: StageResult) -> None:
    index = STAGES.index(result.name) + 1
    wrote = ", ".join(str(p) for p in result.wrote)
    if result.reused:
        click.echo(f"[{index}/{len(STAGES)}] {result.name:<9} reused (ran in {result.original_seconds:.1f} s): {wrote}")
    else:
        click.echo(f"[{index}/{len(STAGES)}] {result.name:<9} {result.seconds:6.1f} s  wrote {wrote}")


def _event_line(event: dict[str, Any]) -> None:
    if event.get("type") == "segment":
        click.echo(f"    segment  {event['label']:<8} {event['start']:7.2f} – {event['end']:7.2f} s  "
                   f"score {event['score']:.3f}  (emitted {event['latency']:.2f} s after its end)")
    elif event.get("type") == "alert":
        click.echo(f"    alert    {event['label']:<8} {event['start']:7.2f} – {event['end']:7.2f} s  "
                   f"score {event['score']:.3f} ≥ its operating point {event['min_score']:.3f}")


def _next_commands(out_dir: Path, figures: dict[str, dict[str, Any]]) -> None:
    video = figures["stream"]["file"]
    click.echo("next:")
    click.echo(f"  ecm-edge stream --video {video} --artifacts {out_dir / 'export'} --out -")
    click.echo(f"  ecm-edge eval --checkpoint {out_dir / 'train'} --data {out_dir / 'data'} --split test")
    click.echo(f"  ecm-edge train --data {out_dir / 'data'} --config demo --set train.epochs=100")
