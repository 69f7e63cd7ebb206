"""``ecm-edge predict``: detections from snippet features with a trained model (ActivityNet result format).

torch is imported inside the command only.
"""

from __future__ import annotations

from pathlib import Path

import click

from ecm_edge.errors import DataError


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), metavar="RUN|FILE",
              help="Run folder, model.safetensors (with model.json beside it), or a last.pt / best.pt state.")
@click.option("--features", "features_path", required=True, type=click.Path(path_type=Path), metavar="DIR|FILE",
              help="A [T, D] .npy file, or a folder of <video>.npy files.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Detections file (ActivityNet result JSON).")
@click.option("--save-raw", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the raw predictions (.npz: CAS, video scores, timing) to re-run post-processing.")
@click.option("--fps", type=float, default=None,
              help="Frame rate of the source videos (default: the checkpoint config's data.default_fps).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override the checkpoint's config (post-processing, e.g. --set post.class_threshold=0.2).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
def predict(checkpoint: Path, features_path: Path, output: Path, save_raw: Path | None, fps: float | None,
            overrides: tuple[str, ...], device: str, progress: bool | None) -> None:
    """Localize actions in feature files with a trained ECM; write ActivityNet-format detections.

    Each video's features are resampled uniformly to the model's T_fixed snippets; its duration is
    T · 0.64 s (16 frames per snippet at 25 fps) and its frame count duration · fps.

    \b
    Examples:
      ecm-edge predict --checkpoint runs/train/exp --features feats/ -o pred.json
      ecm-edge predict --checkpoint runs/train/exp/model.safetensors --features v1.npy -o pred.json --save-raw raw.npz
    """
    import sys

    from tqdm import tqdm

    from ecm_edge.config import apply_overrides
    from ecm_edge.rawpred import detections_from_raw
    from ecm_edge.train.distributed import DistContext
    from ecm_edge.train.inference import load_inference_model, predict_files_raw
    from ecm_edge.train.trainer import resolve_device

    resolve_device(device, DistContext())
    deployed = load_inference_model(checkpoint, device=device)
    cfg = deployed.config
    apply_overrides(cfg, overrides)
    files = feature_files(features_path)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(files), desc="predict", unit="video", disable=not show) as bar:
        raw = predict_files_raw(deployed, files, cfg, fps=fps, device=device, on_batch=bar.update,
                                checkpoint=checkpoint)
    from ecm_edge.evaluation import write_predictions

    results = detections_from_raw(raw, cfg)
    write_predictions(output, results)
    count = sum(len(v) for v in results.values())
    click.echo(f"{count} detections for {len(results)} video(s) written to {output}")
    if save_raw is not None:
        raw.save(save_raw)
        click.echo(f"raw predictions written to {save_raw} (re-run post-processing without the network)")
    click.echo(f"next: score it with ground truth: ecm-edge eval --pred {output} --gt GT.json")


def feature_files(path: Path) -> list[Path]:
    """One ``.npy`` file, or every ``*.npy`` of a folder (sorted); the file stem is the video id."""
    if path.is_file():
        if path.suffix != ".npy":
            raise DataError(f"{path} is not a .npy feature file ([T, D] float array)")
        return [path]
    if not path.is_dir():
        raise DataError(f"features {path} do not exist; pass a [T, D] .npy file or a folder of <video>.npy files")
    files = sorted(p for p in path.glob("*.npy") if not p.name.startswith("."))
    if not files:
        raise DataError(f"{path} holds no .npy feature files (expected <video>.npy arrays [T, D]); for a dataset "
                        "folder with gt.json use `ecm-edge eval --checkpoint RUN --data DIR`")
    return files
