"""``ecm-edge postprocess``: raw predictions (``--save-raw``) → ActivityNet detections, without the network."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ecm_edge.cli.options import config_options, resolve_config

BACKEND_CHOICES = ("auto", "numpy", "cpu", "cuda")


@click.command()
@click.argument("raw", type=click.Path(dir_okay=False, path_type=Path))
@config_options()
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default=None,
              help="Post-processing kernels (default: post.backend of the config, 'auto': cuda with a GPU, "
                   "else cpu).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Detections JSON to write (default: <raw>.pred.json beside RAW).")
def postprocess(raw: Path, config_name: str, overrides: tuple[str, ...], backend: str | None,
                output: Path | None) -> None:
    """Turn RAW, a raw-prediction .npz, into detections (ActivityNet JSON).

    Re-tune post-processing in seconds: e.g. --set post.mode=clean --set post.nms_iou=0.5, or threshold the
    transition weights instead of the CAS with --set post.score_source=weights (or fused).
    """
    from ecm_edge.evaluation import write_predictions
    from ecm_edge.postprocess import resolve_backend
    from ecm_edge.rawpred import RawPredictions, detections_from_raw

    cfg = resolve_config(config_name, overrides)
    name = resolve_backend(backend or cfg.post.backend)
    predictions = RawPredictions.load(raw)
    start = time.perf_counter()
    results = detections_from_raw(predictions, cfg, source_name=str(raw), backend=name)
    seconds = time.perf_counter() - start
    output = output or raw.with_name(f"{raw.stem}.pred.json")
    write_predictions(output, results)
    count = sum(len(v) for v in results.values())
    click.echo(f"{count} detections in {predictions.num_videos} videos ({cfg.post.mode} mode, {name} backend, "
               f"{cfg.post.score_source} scores, "
               f"{seconds:.3f} s)")
    click.echo(f"wrote {output}")
    click.echo(f"next: ecm-edge eval --pred {output} --gt <annotations: gt.json or a W-TALC folder>")
