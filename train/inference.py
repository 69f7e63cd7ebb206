"""Offline inference with a trained ECM: features → raw predictions → detections → mAP.

The network part runs the pre-stream only (:meth:`ECM.export_forward`) on features resampled uniformly to
``T_fixed`` snippets, as the reference tests; the CAS then spans the whole video, and the post-processing
(docs/design.md §5) maps it back to time by interpolating to the video's frame count. The raw network outputs are
kept as :class:`~ecm_edge.rawpred.RawPredictions` so thresholds can be re-tuned without the network; the
post-processing itself (:func:`~ecm_edge.rawpred.detections_from_raw`) is torch-free and lives there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ecm_edge.config import Config, apply_overrides
from ecm_edge.data.annotations import Annotations
from ecm_edge.data.dataset import VideoDataset, resample_features
from ecm_edge.data.features import load_npy, read_feature_file
from ecm_edge.errors import CheckpointError, DataError
from ecm_edge.rawpred import RawPredictions, detections_from_raw
from ecm_edge.train.deploy import DeployModel, deploy_from_training_state, load_deploy
from ecm_edge.train.model import ECM

logger = logging.getLogger("ecm_edge")

INFERENCE_BATCH = 16  # clips per forward pass; all have T_fixed snippets, so they stack


def predict_features(model: ECM, features: Sequence[np.ndarray], t_fixed: int, *, device: str | torch.device = "cpu",
                     batch_size: int = INFERENCE_BATCH, video_ids: Sequence[str] | None = None,
                     on_batch: Callable[[int], None] | None = None,
                     with_weights: bool = False) -> tuple[np.ndarray, ...]:
    """Run the pre-stream on each video's ``[T, D]`` features resampled uniformly to ``t_fixed``.

    Returns (cas [N, C, t_fixed] raw logits, video_scores [N, C] = softmax of the top-k score), float32, and with
    ``with_weights`` a third array, the transition weights [N, C, t_fixed].
    A feature dimension other than the model's is a DataError naming the video.
    """
    expected = model.dims.feature_dim
    for i, f in enumerate(features):
        if f.ndim != 2 or f.shape[1] != expected:
            name = video_ids[i] if video_ids is not None else f"#{i}"
            raise DataError(f"features of video {name!r} have shape {tuple(f.shape)} but the model expects "
                            f"[T, {expected}]; use the checkpoint trained on these features (feature dims must match)")
    model.eval()
    cas_out = np.zeros((len(features), model.dims.num_classes, t_fixed), dtype=np.float32)
    scores_out = np.zeros((len(features), model.dims.num_classes), dtype=np.float32)
    weights_out = np.zeros_like(cas_out) if with_weights else None
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            chunk = features[start:start + batch_size]
            clips = np.stack([resample_features(f, t_fixed) for f in chunk])
            cas, scores, *weights = model.export_forward(torch.from_numpy(clips).to(device), with_weights)
            cas_out[start:start + len(chunk)] = cas.float().transpose(1, 2).cpu().numpy()
            if weights_out is not None:
                weights_out[start:start + len(chunk)] = weights[0].float().transpose(1, 2).cpu().numpy()
            scores_out[start:start + len(chunk)] = scores.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(chunk))
    return (cas_out, scores_out) if weights_out is None else (cas_out, scores_out, weights_out)


def predict_dataset_raw(model: ECM, dataset: VideoDataset, class_names: Sequence[str], cfg: Config, *,
                        device: str | torch.device = "cpu",
                        on_batch: Callable[[int], None] | None = None) -> RawPredictions:
    """Raw predictions (CAS, video scores and timing) for every video of ``dataset``."""
    ids = list(dataset.video_ids)
    features = _LazyFeatures(dataset, ids)
    cas, scores, weights = predict_features(model, features, cfg.data.t_fixed, device=device, video_ids=ids,
                                            on_batch=on_batch, with_weights=True)
    return RawPredictions(
        video_ids=ids,
        cas=cas,
        lengths=np.full(len(ids), cfg.data.t_fixed, dtype=np.int64),
        video_scores=scores,
        num_frames=np.asarray([dataset.num_frames(v) for v in ids], dtype=np.int64),
        fps=np.asarray([dataset.fps(v) for v in ids], dtype=np.float64),
        duration=np.asarray([dataset.duration(v) for v in ids], dtype=np.float64),
        class_names=list(class_names),
        weights=weights,
    )


class _LazyFeatures(Sequence):
    """The features of a dataset's videos, read when indexed (so a large split is never all in memory)."""

    def __init__(self, dataset: VideoDataset, ids: list[str]):
        self.dataset, self.ids = dataset, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self.dataset.features(v) for v in self.ids[index]]
        return self.dataset.features(self.ids[index])


def predict_files_raw(deployed: DeployModel, files: Sequence[Path], cfg: Config, *, fps: float | None = None,
                      device: str | torch.device = "cpu", on_batch: Callable[[int], None] | None = None,
                      checkpoint: str | Path | None = None) -> RawPredictions:
    """Raw predictions for standalone ``<video>.npy`` feature files ``[T, D]`` (no annotations).

    A video lasts T · snippet seconds (0.64 s); its frame rate is ``fps`` (default ``data.default_fps``).
    Every file's shape is checked against the model before any is run.
    """
    dim = deployed.model.dims.feature_dim
    ids = [Path(f).stem for f in files]
    lengths = []
    for vid, path in zip(ids, files, strict=True):
        shape = load_npy(Path(path), vid, mmap=True).shape
        if len(shape) != 2 or shape[1] != dim:
            raise DataError(f"features of video {vid!r} (file {path}) have shape {tuple(shape)} but the model "
                            f"{checkpoint or ''} expects [T, {dim}]; use features extracted like the training "
                            "ones, or a checkpoint trained on these")
        lengths.append(int(shape[0]))
    features = _LazyFiles(files, ids, dim)
    cas, scores, weights = predict_features(deployed.model, features, cfg.data.t_fixed, device=device,
                                            video_ids=ids, on_batch=on_batch, with_weights=True)
    video_fps = float(fps if fps is not None else cfg.data.default_fps)
    duration = np.asarray(lengths, dtype=np.float64) * cfg.data.snippet_seconds
    return RawPredictions(
        video_ids=ids,
        cas=cas,
        lengths=np.full(len(ids), cfg.data.t_fixed, dtype=np.int64),
        video_scores=scores,
        num_frames=np.maximum(1, np.round(duration * video_fps)).astype(np.int64),
        fps=np.full(len(ids), video_fps, dtype=np.float64),
        duration=duration,
        class_names=list(deployed.class_names),
        weights=weights,
    )


class _LazyFiles(Sequence):
    """Feature files read (and validated) when indexed."""

    def __init__(self, files: Sequence[Path], ids: list[str], dim: int):
        self.files, self.ids, self.dim = list(files), ids, dim

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return read_feature_file(self.files[index], self.ids[index], self.dim)


def evaluate_raw(raw: RawPredictions, ground_truth: Annotations, cfg: Config, ambiguous=None):
    """(results, EvalResult) of raw predictions against the ground truth of the same videos."""
    from ecm_edge.evaluation import evaluate_detections

    results = detections_from_raw(raw, cfg)
    return results, evaluate_detections(results, ground_truth, cfg.eval.iou_thresholds, ambiguous=ambiguous)


def load_inference_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> DeployModel:
    """Deploy weights from a run folder, a ``model.safetensors`` file, or a ``last.pt`` / ``best.pt`` state."""
    path = Path(checkpoint)
    if path.suffix == ".pt":
        return deploy_from_training_state(path, device)
    return load_deploy(path, device=device)


def check_class_names(model_classes: Sequence[str], data_classes: Sequence[str], checkpoint: str | Path,
                      data_dir: str | Path) -> None:
    """The dataset must use the checkpoint's class list, in the same order."""
    if list(model_classes) == list(data_classes):
        return
    first = next((i for i, (a, b) in enumerate(zip(model_classes, data_classes, strict=False)) if a != b),
                 min(len(model_classes), len(data_classes)))
    ours = model_classes[first] if first < len(model_classes) else "(none)"
    theirs = data_classes[first] if first < len(data_classes) else "(none)"
    raise CheckpointError(f"checkpoint {checkpoint} was trained on {len(model_classes)} classes but {data_dir} has "
                          f"{len(data_classes)}; they differ at index {first} ({ours!r} vs {theirs!r}); use a "
                          "checkpoint trained on this dataset's class list")


def predict_dataset(checkpoint: str | Path, data_dir: str | Path, split: str = "test",
                    overrides: Sequence[str] = (), *, device: str = "cpu",
                    raw_out: list[RawPredictions] | None = None) -> tuple[dict, Annotations, Config]:
    """Detections for one split of a dataset with a trained model.

    Returns (ActivityNet results mapping, the split's ground-truth annotations, the resolved config: the
    checkpoint's config with ``overrides`` applied, e.g. ``post.class_threshold=0.2``). The dataset's class
    list must match the checkpoint's. With ``raw_out`` (a list), the raw predictions are appended to it.
    """
    deployed = load_inference_model(checkpoint, device=device)
    cfg = deployed.config
    apply_overrides(cfg, overrides)
    dataset = VideoDataset.open(data_dir, cfg, split)
    check_class_names(deployed.class_names, dataset.class_names, checkpoint, data_dir)
    try:
        raw = predict_dataset_raw(deployed.model, dataset, deployed.class_names, cfg, device=device)
    except DataError as exc:
        if "expected [T, " not in str(exc):
            raise
        raise DataError(f"{exc} — but checkpoint {checkpoint} needs [T, {deployed.model.dims.feature_dim}] features "
                        "like those it was trained on") from None
    if raw_out is not None:
        raw_out.append(raw)
    return detections_from_raw(raw, cfg), dataset.annotations, cfg
