"""``ecm-edge postprocess``: raw predictions (``--save-raw``) → ActivityNet detections, without the network."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ecm_edge.cli.options import config_options, renamed_option, resolve_config
from ecm_edge.config import CHOICES

KERNEL_CHOICES = CHOICES["post.kernels"]


@click.command()
@click.argument("raw", type=click.Path(dir_okay=False, path_type=Path))
@config_options()
@renamed_option("--kernels", "--backend", "kernels", type=click.Choice(KERNEL_CHOICES), default=None,
                help="Post-processing kernels (default: post.kernels of the config, 'auto': cuda with a GPU, "
                     "else cpu).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Detections JSON to write (default: <raw>.pred.json beside RAW).")
def postprocess(raw: Path, config_name: str, overrides: tuple[str, ...], kernels: str | None,
                output: Path | None) -> None:
    """Turn RAW, a raw-prediction .npz, into detections (ActivityNet JSON).

    Re-tune post-processing in seconds: e.g. --set post.mode=clean --set post.nms_iou=0.5, or threshold the
    transition weights instead of the CAS with --set post.score_source=weights (or fused).
    """
    from ecm_edge.evaluation import write_predictions
    from ecm_edge.postprocess import resolve_kernels
    from ecm_edge.rawpred import RawPredictions, detections_from_raw

    cfg = resolve_config(config_name, overrides)
    name = resolve_kernels(kernels or cfg.post.kernels)
    predictions = RawPredictions.load(raw)
    start = time.perf_counter()
    results = detections_from_raw(predictions, cfg, source_name=str(raw), kernels=name)
    seconds = time.perf_counter() - start
    output = output or raw.with_name(f"{raw.stem}.pred.json")
    write_predictions(output, results)
    count = sum(len(v) for v in results.values())
    click.echo(f"{count} detections in {predictions.num_videos} videos ({cfg.post.mode} mode, {name} kernels, "
               f"{cfg.post.score_source} scores, "
               f"{seconds:.3f} s)")
    click.echo(f"wrote {output}")
    click.echo(f"next: ecm-edge eval --pred {output} --gt <annotations: gt.json or a W-TALC folder>")
