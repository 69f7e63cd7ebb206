"""``ecm-edge export``: deploy weights → ONNX (FP32/FP16/INT8), TensorRT engines, manifests, validation.

torch, onnx and onnxsim are imported inside the command only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ecm_edge.cli.options import progress_factory


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), metavar="RUN|FILE", default=None,
              help="Run folder or model.safetensors (with model.json beside it).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="Precision of the deployable artifacts (the FP32 ONNX is always written too).")
@click.option("--calib-data", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="INT8: dataset whose training split calibrates the activations (default: the checkpoint's "
                   "training data).")
@click.option("--calib-cache", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="INT8: where calibration results are cached (default: OUTDIR/calibration).")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True,
              help="ONNX opset (17 is accepted by TensorRT on JetPack 6).")
@click.option("--engine/--no-engine", default=None,
              help="Build TensorRT engines (default: when TensorRT and a GPU are present).")
@click.option("--validate", "validate_data", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Compare torch and the artifacts on DIR's test split: errors and mAP.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="OUTDIR", help="Output folder (default: runs/export/exp, auto-incremented).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override the checkpoint's config, e.g. --set export.max_t=4096.")
@click.option("--backbone", default=None, metavar="NAME",
              help="Export a feature backbone (i3d, i3d-flow) instead of the ECM head.")
@click.option("--backbone-weights", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Local weights of --backbone.")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Also write a Triton Inference Server model repository (serve it with `ecm-edge serve DIR`).")
@click.option("--triton-head", type=click.Choice(["numpy", "onnxruntime", "bls"]), default="numpy", show_default=True,
              help="What runs the head for the repository's ecm_stream model: numpy or onnxruntime inside it, or "
                   "bls: it calls the head model (TensorRT where an engine was built, else ONNX Runtime) through "
                   "the server, which needs NVIDIA's Triton container.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
def export(checkpoint: Path | None, precision: str, calib_data: Path | None, calib_cache: Path | None, opset: int,
           engine: bool | None, validate_data: Path | None, out_dir: Path | None, overrides: tuple[str, ...],
           backbone: str | None, backbone_weights: Path | None, triton_dir: Path | None, triton_head: str,
           progress: bool | None) -> None:
    """Export a trained ECM for deployment: ONNX graphs, FP16/INT8 variants, TensorRT engines, manifests.

    Writes the offline graph (features [B, T, D] → cas [B, T, C], video_scores [B, C]) and the streaming graph
    (a window [B, W, D] → cas of its W − 4 centre columns), each in FP32 and in --precision, with a manifest
    beside every file; engines where TensorRT and a GPU are present.

    \b
    Examples:
      ecm-edge export --checkpoint runs/train/exp --precision fp16
      ecm-edge export --checkpoint runs/train/exp --precision int8 --calib-data data/small --validate data/small
      ecm-edge export --checkpoint runs/train/exp --precision fp32 --triton runs/triton
    """
    from ecm_edge.io import next_run_dir

    if backbone is not None:
        _export_backbone(backbone, backbone_weights, out_dir, opset)
        return
    if checkpoint is None:
        raise click.UsageError("--checkpoint RUN|model.safetensors is required (or --backbone NAME)")
    from ecm_edge.export.pipeline import ExportRequest, run_export

    out = out_dir if out_dir is not None else next_run_dir("runs", "export")
    request = ExportRequest(checkpoint=checkpoint, out_dir=out, precision=precision, calib_data=calib_data,
                            calib_cache=calib_cache, opset=opset, engine=engine, validate=validate_data,
                            overrides=overrides, triton=triton_dir, triton_head=triton_head)
    show = sys.stderr.isatty() if progress is None else progress
    result = run_export(request, on_step=print_step, progress=progress_factory(show))
    if result.engine_message:
        click.echo(result.engine_message)
    if result.validation is not None:
        click.echo("")
        click.echo(result.validation.to_markdown())
    click.echo(f"{len(result.artifacts)} artifacts with manifests in {result.out_dir}")
    click.echo(f"next: ecm-edge stream --artifacts {result.out_dir} --camera 0")
    if triton_dir is not None:
        click.echo(f"serve the Triton repository: ecm-edge serve {triton_dir}; then ecm-edge stream --triton "
                   "http://HOST:8000 --camera 0")


def print_step(step) -> None:
    """One line per step: what, where, size, seconds."""
    size = f"{step.size_bytes / 1e6:8.2f} MB" if step.size_bytes is not None else " " * 11
    click.echo(f"{step.what:<44} {step.path}  {size}  {step.seconds:6.1f} s")




def _export_backbone(name: str, weights: Path | None, out_dir: Path | None, opset: int) -> None:
    import time

    from ecm_edge.export.backbones.export import export_backbone_onnx
    from ecm_edge.io import next_run_dir

    if weights is None:
        raise click.UsageError("--backbone needs --backbone-weights FILE (weights are never downloaded)")
    out = out_dir if out_dir is not None else next_run_dir("runs", "export")
    started = time.perf_counter()
    path = export_backbone_onnx(name, weights, out, opset)
    click.echo(f"{'onnx backbone ' + name:<44} {path}  {path.stat().st_size / 1e6:8.2f} MB  "
               f"{time.perf_counter() - started:6.1f} s")
    click.echo(f"next: extract features with it: ecm-edge extract --help (extractor {name})")
