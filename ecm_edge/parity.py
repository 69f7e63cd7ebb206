"""Stream vs offline parity: the same checkpoint and test features through the offline pipeline and through the
stream, scored by detection mAP.

- :func:`measure_parity`: mAP@0.5 (and average mAP) of the offline pipeline (``ecm-edge eval``: each video
  resampled to ``data.t_fixed`` columns, torch) and of the stream (each video replayed snippet by snippet through
  the :class:`~ecm_edge.runtime.localizer.Localizer`, then flushed), and of the offline pipeline fed the stream's
  columns (:func:`offline_at_rate`), which differs from the stream only in seeing the whole video.

The offline side runs the network through torch (``ecm_edge.train.inference``), the stream through the runtime,
so this module sits above both; ``ecm-edge bench stream`` reports it and ``tests/test_stream_parity.py`` holds
it to a margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.config import Config
from ecm_edge.evaluation import evaluate_detections
from ecm_edge.rawpred import RawPredictions, detections_from_raw
from ecm_edge.runtime.head import full_cas, load_head_weights
from ecm_edge.runtime.online import CausalScorer
from ecm_edge.runtime.resample import stream_indices

PARITY_IOU = 0.5


def measure_parity(checkpoint: str | Path, data_dir: str | Path, split: str = "test",
                   overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """mAP@0.5 of the offline pipeline and of the stream (each test video replayed snippet by snippet, as
    ``ecm-edge stream --features``, then flushed) on the same checkpoint and features; ``relative`` is
    (stream − offline) / offline.

    ``offline_at_rate`` (score source ``cas`` only, else None) is the offline pipeline fed the way the stream is
    fed: each video resampled to ⌈T·ρ⌉ columns at the stream's rate ρ instead of ``data.t_fixed``, scored and
    normalized over the whole video, post-processed offline. It differs from the stream only in seeing the future;
    ``relative_at_rate`` compares the stream with it."""
    from ecm_edge.data.dataset import VideoDataset
    from ecm_edge.runtime.localizer import Localizer
    from ecm_edge.train.inference import predict_dataset  # torch

    offline, ground_truth, cfg = predict_dataset(checkpoint, data_dir, split, overrides)
    dataset = VideoDataset.open(data_dir, cfg, split)
    streamed: dict[str, list[dict[str, Any]]] = {}
    localizer = Localizer.from_artifacts(checkpoint, overrides=overrides)
    for video_id in dataset.video_ids:
        events = []
        for i, row in enumerate(dataset.features(video_id)):  # each video on its own clock, from 0
            events += localizer.push_features(row, start_time=0.0 if i == 0 else None)
        events += localizer.flush()
        streamed[video_id] = [{"label": e["label"], "score": e["score"], "segment": [e["start"], e["end"]]}
                              for e in events if e["type"] == "segment"]
    localizer.close()
    rate = localizer.rate
    iou = sorted({PARITY_IOU, *cfg.eval.iou_thresholds})
    at = iou.index(PARITY_IOU)
    offline_eval = evaluate_detections(offline, ground_truth, iou)
    stream_eval = evaluate_detections(streamed, ground_truth, iou)
    offline_map, stream_map = offline_eval.map[at], stream_eval.map[at]
    at_rate = (evaluate_detections(offline_at_rate(checkpoint, dataset, cfg, rate), ground_truth, iou).map[at]
               if cfg.post.score_source == "cas" else None)
    return {"offline": offline_map, "stream": stream_map, "relative": _relative(stream_map, offline_map),
            "offline_at_rate": at_rate, "relative_at_rate": None if at_rate is None else _relative(stream_map, at_rate),
            "videos": len(dataset.video_ids),
            "config": cfg.name, "columns_per_snippet": rate,
            "offline_average": offline_eval.average, "stream_average": stream_eval.average,
            "stream_segments": sum(len(v) for v in streamed.values()),
            "offline_segments": sum(len(v) for v in offline.values())}


def offline_at_rate(checkpoint: str | Path, dataset: Any, cfg: Config, rate: float) -> dict[str, list[dict]]:
    """Offline detections (ActivityNet results) on the columns the stream builds at ``rate`` columns per snippet
    (⌈T·rate⌉ per video) instead of ``data.t_fixed``; video scores and normalization over the whole video."""
    weights, _ = load_head_weights(checkpoint)
    ids = list(dataset.video_ids)
    videos_cas = []
    for video_id in ids:
        features = dataset.features(video_id)
        videos_cas.append(full_cas(weights, features[stream_indices(len(features), rate)]))
    lengths = [len(c) for c in videos_cas]
    cas = np.zeros((len(ids), weights.num_classes, max(lengths)), np.float32)
    scores = np.zeros((len(ids), weights.num_classes), np.float32)
    for i, video_cas in enumerate(videos_cas):
        cas[i, :, :len(video_cas)] = video_cas.T
        scores[i] = CausalScorer(weights.num_classes, len(video_cas), cfg.model.topk_ratio).push(video_cas)[0]
    raw = RawPredictions(video_ids=ids, cas=cas, lengths=np.asarray(lengths), video_scores=scores,
                         num_frames=np.asarray([dataset.num_frames(v) for v in ids]),
                         fps=np.asarray([dataset.fps(v) for v in ids]),
                         duration=np.asarray([dataset.duration(v) for v in ids]), class_names=dataset.class_names)
    return detections_from_raw(raw, cfg)


def _relative(value: float, reference: float) -> float:
    return (value - reference) / reference if reference > 0 else float("inf")
