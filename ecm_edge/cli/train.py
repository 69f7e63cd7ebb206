"""``ecm-edge train``: train ECM on a feature dataset into ``runs/train/<name>``.

torch is imported inside the command only, so ``ecm-edge --help`` stays fast and torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from ecm_edge.cli.main import info
from ecm_edge.cli.options import config_options
from ecm_edge.errors import EcmEdgeError

logger = logging.getLogger("ecm_edge")

# the run folder's metrics file and the metric best.pt is chosen by (ecm_edge.train.trainer, without torch here)
METRICS_NAME = "metrics.jsonl"
SELECTION_METRIC = "map_avg"


@click.command()
@config_options(default="thumos14")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset folder (gt.json, split_train.txt, features/). Optional with --resume.")
@click.option("--name", default=None, help="Run name: runs/train/NAME (auto-incremented if it exists).")
@click.option("--project", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder that holds train/<name>.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--resume", default=None, metavar="RUN",
              help="Continue a run (its folder, its last.pt, or its name) from its last checkpoint.")
@click.option("--redeploy", default=None, metavar="RUN",
              help="Only rebuild a run's deploy weights (model.safetensors + model.json) from its best.pt, e.g. "
                   "after they were corrupted or lost; trains nothing.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes for DistributedDataParallel (runs torchrun; gloo on CPU, NCCL on GPU).")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="After training, choose the alert operating points on the held-out videos and measure them on "
                   "the test split (as `ecm-edge calibrate`; RUN/operating_points.json).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.pass_context
def train(ctx: click.Context, config_name: str, overrides: tuple[str, ...], data_dir: Path | None, name: str | None,
          project: str, device: str, resume: str | None, redeploy: str | None, nproc: int, calibrate: bool,
          progress: bool | None) -> None:
    """Train ECM (docs/design.md §3) with Adam, evaluating mAP on held-out training videos every epoch.

    \b
    Examples:
      ecm-edge synth --preset small -o data/small
      ecm-edge train --config small --data data/small
      ecm-edge train --config thumos14 --data data/thumos14 --device cuda --set train.amp=bf16
      ecm-edge train --resume runs/train/exp
      ecm-edge train --config small --data data/small --nproc 2
      ecm-edge train --redeploy runs/train/exp
      ecm-edge train --config small --data data/small --no-calibrate
    """
    from ecm_edge.train import trainer
    from ecm_edge.train.worker import resolve_run, train_process

    if redeploy:
        from ecm_edge.train.deploy import rebuild_deploy

        weights = rebuild_deploy(Path(redeploy) if Path(redeploy).is_dir() else trainer.find_resume_dir(redeploy, project))
        info(f"deploy weights rebuilt: {weights} (+ {weights.with_name('model.json').name})")
        return

    if resume and ctx.get_parameter_source("config_name") is not click.core.ParameterSource.DEFAULT:
        logger.warning("--config is ignored with --resume: the run continues with its own config "
                       "(--set overrides still apply)")
    if data_dir is None and not resume:
        raise click.UsageError("--data DIR is required (the dataset folder to train on)")
    cfg, data_dir, run_dir = resolve_run(config_name, overrides, data_dir, project, resume, None)

    under_torchrun = "WORLD_SIZE" in os.environ
    if nproc > 1 and not under_torchrun:
        summary = _launch_distributed(nproc, cfg, config_name, overrides, data_dir, project, name, device, resume,
                                      run_dir, progress)
    else:
        summary = train_process(cfg, data_dir, project=project, name=name, run_dir=run_dir, device=device,
                                resume=bool(resume), progress=progress)
    if summary is None:  # a rank other than 0 under torchrun
        return
    _report(summary)
    if calibrate and not summary.already_finished:
        _calibrate(summary.run_dir, data_dir, progress)
    if not summary.already_finished:
        click.echo(f"next: ecm-edge eval --checkpoint {summary.run_dir} --data {data_dir} --split test")


def _launch_distributed(nproc: int, cfg: Any, config_name: str, overrides: tuple[str, ...], data_dir: Path,
                        project: str, name: str | None, device: str, resume: str | None, run_dir: Path | None,
                        progress: bool | None) -> SimpleNamespace:
    """Train in ``nproc`` processes under torchrun; the summary read back from the run folder."""
    from ecm_edge.io import next_run_dir

    if run_dir is None:
        run_dir = next_run_dir(project, "train", name)
    args = ["--data", str(data_dir), "--device", device, "--project", str(project), "--run-dir", str(run_dir)]
    args += ["--resume", str(run_dir)] if resume else ["--config", str(config_name)]
    for item in overrides:
        args += ["--set", item]
    if progress is not None:
        args.append("--progress" if progress else "--no-progress")
    command = launch_command(nproc, args)
    info(f"launching {nproc} processes: {' '.join(command)}")
    code = subprocess.call(command)
    if code != 0:
        raise EcmEdgeError(f"distributed training failed (torchrun exit code {code}); see the messages above")
    return _summary_from_run_dir(Path(run_dir))


def launch_command(nproc: int, train_args: list[str]) -> list[str]:
    """torchrun running ``python -m ecm_edge.train TRAIN_ARGS`` in ``nproc`` processes on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ecm_edge.train", *train_args]


def _summary_from_run_dir(run_dir: Path) -> SimpleNamespace:
    """What the report needs, read back from the files the worker processes wrote (no torch needed)."""
    records = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines() if line.strip()]
    evaluated = [r for r in records if SELECTION_METRIC in r]
    best = max(evaluated, key=lambda r: (r[SELECTION_METRIC], -r["epoch"])) if evaluated else None
    files = {p.name: p for p in run_dir.iterdir() if not p.name.startswith(".")}
    return SimpleNamespace(run_dir=run_dir, epochs=len(records), history=records, best=best,
                           last=records[-1] if records else None, already_finished=False, files=files,
                           eval_split=records[-1].get("eval_split") if records else None)


def format_summary_table(summary: Any) -> str:
    """Markdown table: the best and the last epoch with their loss and mAP per IoU."""
    rows = [(which, r) for which, r in (("best", summary.best), ("last", summary.last)) if r is not None]
    ious = next((list(r["map"]) for _, r in rows if "map" in r), [])
    header = ["", "epoch", "loss"] + [f"mAP@{t}" for t in ious] + (["avg"] if ious else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for which, record in rows:
        cells = [which, str(record["epoch"]), f"{record['loss']['total']:.4f}"]
        if ious:
            cells += [f"{100 * record['map'][t]:.2f}" if "map" in record else "-" for t in ious]
            cells.append(f"{100 * record[SELECTION_METRIC]:.2f}" if SELECTION_METRIC in record else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report(summary: Any) -> None:
    run_dir = summary.run_dir
    if summary.already_finished:
        click.echo(f"{run_dir} already finished all {summary.epochs} epochs; nothing to do. To train longer, "
                   f"resume with --set train.epochs=N (N > {summary.epochs}).")
        return
    if summary.eval_split:
        click.echo(f"mAP (%) on the {summary.eval_split} split; best = highest average mAP:")
    click.echo(format_summary_table(summary))
    click.echo(f"run written to {run_dir}: {', '.join(sorted(summary.files))}")


def _calibrate(run_dir: Path, data_dir: Path, progress: bool | None) -> None:
    """The alert operating points of the new deploy weights (``ecm-edge calibrate``). A failure leaves the trained
    run intact: it is a warning with the command to run once the cause is fixed."""
    from ecm_edge.cli.calibrate import format_points_table, run_calibration

    try:
        result = run_calibration(run_dir, data_dir, progress=progress)
    except EcmEdgeError as exc:
        logger.warning("no alert operating points: %s; once fixed, run `ecm-edge calibrate --checkpoint %s --data "
                       "%s`", exc, run_dir, data_dir)
        return
    click.echo(format_points_table(result.points))
    click.echo(f"operating points written to {result.path}")
