"""Does the exported model still localize? Parity with torch, mAP per precision, latency per precision.

- **Parity**: the torch model (deploy weights) and each artifact run the same real features; per output, the
  maximum absolute error and the maximum error relative to the output's largest magnitude. FP32 ONNX must stay
  within :data:`FP32_TOLERANCE` on ``cas`` and ``weights``; FP16 and INT8 errors are reported.
- **mAP**: each artifact's offline outputs on a dataset split (clips resampled uniformly to T_fixed, as the
  offline pipeline does) go through the same post-processing and evaluation as the torch model's; FP16 should stay
  within :data:`MAP_MARGIN_POINTS` ``["fp16"]`` mAP@0.5 points of FP32, INT8 within ``["int8"]``.
- **Latency**: seconds per call of each artifact for several clip lengths T (offline graph) or batches of
  5-snippet windows (streaming graph), through the artifact's engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecm_edge.architecture import STREAM_WINDOW
from ecm_edge.config import Config
from ecm_edge.data.dataset import VideoDataset, resample_features
from ecm_edge.errors import DataError
from ecm_edge.runtime.engines import EngineBase
from ecm_edge.timing import time_call

log = logging.getLogger("ecm_edge")

FP32_TOLERANCE = 1e-4  # max abs error on cas, torch vs ONNX Runtime FP32
TOLERANCED_OUTPUTS = ("cas", "weights")  # outputs held to FP32_TOLERANCE (weights: sigmoid of cas, same scale)
MAP_MARGIN_POINTS = {"fp32": 0.0, "fp16": 0.3, "int8": 1.0}  # allowed mAP@0.5 loss vs FP32, in points (%)
LATENCY_LENGTHS = (16, 64, 256, 750)
OFFLINE_BATCH = 16  # clips per call while computing outputs for parity and mAP
STREAM_PARITY_VIDEOS = 8  # videos whose whole feature sequence runs through the streaming graphs
WARMUP_CALLS = 3  # untimed calls per shape first (torch and onnxruntime prepare kernels per new shape)


@dataclass
class ParityRow:
    graph: str
    precision: str
    engine: str
    output: str
    max_abs: float
    max_rel: float  # max |a − b| / max |reference|
    tolerance: float | None = None

    @property
    def passed(self) -> bool | None:
        return None if self.tolerance is None else self.max_abs <= self.tolerance


@dataclass
class MapRow:
    name: str  # "torch" or the artifact's precision
    engine: str
    iou: list[float]
    map: list[float]  # fractions
    average: float
    margin_points: float | None = None  # allowed loss at mAP@0.5 vs fp32
    delta_points: float | None = None  # mAP@0.5 minus fp32's, in points

    def at(self, iou: float) -> float:
        index = int(np.argmin(np.abs(np.asarray(self.iou) - iou)))
        return self.map[index]

    @property
    def passed(self) -> bool | None:
        if self.margin_points is None or self.delta_points is None:
            return None
        return self.delta_points >= -self.margin_points


@dataclass
class ValidationReport:
    split: str
    videos: int
    parity: list[ParityRow] = field(default_factory=list)
    maps: list[MapRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        checks = [r.passed for r in self.parity] + [r.passed for r in self.maps]
        return all(c is not False for c in checks)

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "videos": self.videos, "passed": self.passed,
                "parity": [_report_fields(r) for r in self.parity],
                "map": [_report_fields(r) for r in self.maps]}

    def to_markdown(self) -> str:  # "backend" columns: the engine, under validation.md's column word
        lines = [f"Parity with torch on {self.videos} {self.split} videos:", "",
                 "| graph | precision | backend | output | max abs error | max rel error | check |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.parity:
            check = "—" if r.passed is None else (f"≤ {r.tolerance:g} ok" if r.passed else f"> {r.tolerance:g} FAIL")
            lines.append(f"| {r.graph} | {r.precision} | {r.engine} | {r.output} | {r.max_abs:.3g} | "
                         f"{r.max_rel:.3g} | {check} |")
        if self.maps:
            ious = self.maps[0].iou
            lines += ["", f"Detection mAP (%) on the {self.split} split:", "",
                      "| model | backend | " + " | ".join(f"{t:.2f}" for t in ious) + " | avg | Δ@0.5 vs fp32 |",
                      "|---|---|" + "---|" * (len(ious) + 2)]
            for r in self.maps:
                delta = "—" if r.delta_points is None else (
                    f"{r.delta_points:+.2f} ({'ok' if r.passed else 'FAIL'}, ≥ −{r.margin_points:g})")
                lines.append(f"| {r.name} | {r.engine} | " + " | ".join(f"{100 * m:.2f}" for m in r.map)
                             + f" | {100 * r.average:.2f} | {delta} |")
        return "\n".join(lines) + "\n"


def _report_fields(row: ParityRow | MapRow) -> dict[str, Any]:
    """A row as validation.json has always written it: the engine under the key "backend" (the file's format)."""
    return {("backend" if key == "engine" else key): value for key, value in vars(row).items()} | {
        "passed": row.passed}


# -- running the models ----------------------------------------------------------------------------------------
def offline_clips(dataset: VideoDataset, t_fixed: int) -> np.ndarray:
    """Every video's features resampled uniformly to ``t_fixed``: ``[N, t_fixed, D]``."""
    return np.stack([resample_features(np.asarray(dataset.features(v)), t_fixed) for v in dataset.video_ids])


def run_offline(engine: EngineBase, clips: np.ndarray, batch: int = OFFLINE_BATCH,
                progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """The offline graph's outputs for ``clips`` ``[N, T, D]``, concatenated over batches."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(clips), batch):
        for name, value in engine.infer(clips[start:start + batch]).items():
            parts.setdefault(name, []).append(value)
        if progress is not None:
            progress(min(batch, len(clips) - start))
    return {name: np.concatenate(values) for name, values in parts.items()}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], graph: str,
                    precision: str, engine: str) -> list[ParityRow]:
    rows = []
    for name, ref in reference.items():
        if name not in candidate:  # an artifact exported before this output existed
            continue
        got = candidate[name]
        if got.shape != ref.shape:
            raise DataError(f"{precision} {graph} graph gives {name} of shape {got.shape}, torch {ref.shape}")
        error = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        scale = float(np.abs(ref).max()) or 1.0
        tolerance = FP32_TOLERANCE if (precision == "fp32" and name in TOLERANCED_OUTPUTS) else None
        rows.append(ParityRow(graph, precision, engine, name, float(error.max()), float(error.max()) / scale,
                              tolerance))
    return rows


def merge_parity(rows: list[ParityRow]) -> list[ParityRow]:
    """One row per (graph, precision, engine, output): the worst over the videos."""
    merged: dict[tuple[str, str, str, str], ParityRow] = {}
    for row in rows:
        key = (row.graph, row.precision, row.engine, row.output)
        if key not in merged:
            merged[key] = row
        else:
            best = merged[key]
            best.max_abs, best.max_rel = max(best.max_abs, row.max_abs), max(best.max_rel, row.max_rel)
    return list(merged.values())


def evaluate_outputs(outputs: dict[str, np.ndarray], dataset: VideoDataset, class_names: Sequence[str],
                     cfg: Config) -> Any:
    """Post-process offline outputs (``cas [N, T, C]``, ``video_scores [N, C]``, ``weights [N, T, C]`` when the
    artifact has them) with ``cfg.post.score_source`` and score them (EvalResult)."""
    from ecm_edge.evaluation import evaluate_detections
    from ecm_edge.rawpred import RawPredictions, detections_from_raw

    ids = list(dataset.video_ids)
    cas = np.ascontiguousarray(outputs["cas"].transpose(0, 2, 1), dtype=np.float32)
    weights = outputs.get("weights")
    if weights is not None:
        weights = np.ascontiguousarray(weights.transpose(0, 2, 1), dtype=np.float32)
    raw = RawPredictions(video_ids=ids, cas=cas, lengths=np.full(len(ids), cas.shape[2], dtype=np.int64),
                         video_scores=outputs["video_scores"].astype(np.float32),
                         num_frames=np.asarray([dataset.num_frames(v) for v in ids], dtype=np.int64),
                         fps=np.asarray([dataset.fps(v) for v in ids], dtype=np.float64),
                         duration=np.asarray([dataset.duration(v) for v in ids], dtype=np.float64),
                         class_names=list(class_names), weights=weights)
    results = detections_from_raw(raw, cfg, source_name="the model")
    return evaluate_detections(results, dataset.annotations, cfg.eval.iou_thresholds)


def map_row(name: str, engine: str, result: Any) -> MapRow:
    return MapRow(name, engine, list(result.iou), list(result.map), float(result.average))


def add_map_deltas(rows: list[MapRow], iou: float = 0.5) -> None:
    """Δ mAP@``iou`` of each exported precision against the FP32 artifact, with its allowed margin."""
    fp32 = next((r for r in rows if r.name == "fp32"), None)
    if fp32 is None:
        return
    for row in rows:
        if row.name in MAP_MARGIN_POINTS and row is not fp32:
            row.margin_points = MAP_MARGIN_POINTS[row.name]
            row.delta_points = 100.0 * (row.at(iou) - fp32.at(iou))


def streaming_parity(reference: EngineBase, candidate: EngineBase, precision: str, dataset: VideoDataset,
                     videos: int = STREAM_PARITY_VIDEOS) -> list[ParityRow]:
    """Streaming graph vs torch on whole feature sequences (valid padding: T − 4 columns)."""
    rows = []
    for vid in dataset.video_ids[:videos]:
        features = np.asarray(dataset.features(vid), dtype=np.float32)[None]
        if features.shape[1] < 5:
            continue
        rows += compare_outputs(reference.infer(features), candidate.infer(features), "streaming", precision,
                                candidate.name)
    return merge_parity(rows)


# -- latency ----------------------------------------------------------------------------------------------------
def measure_latency(engine: EngineBase, feature_dim: int, lengths: Sequence[int] = LATENCY_LENGTHS,
                    repeat: int = 5, seed: int = 0) -> dict[int, float]:
    """Median milliseconds of one offline call ``[1, T, D]`` per T (after :data:`WARMUP_CALLS` untimed calls)."""
    rng = np.random.default_rng(seed)
    result = {}
    for length in lengths:
        features = np.maximum(rng.standard_normal((1, length, feature_dim), dtype=np.float32), 0)
        times = time_call(lambda f=features: engine.infer(f), repeat=repeat, warmup=WARMUP_CALLS)
        result[int(length)] = float(np.median(times) * 1e3)
    return result


def measure_stream_latency(engine: EngineBase, feature_dim: int, batches: Sequence[int], repeat: int = 5,
                           seed: int = 0) -> dict[int, float]:
    """Median milliseconds of one streaming call ``[B, 5, D]`` (B windows of the streaming head's width, one new
    column each) per batch size B (after :data:`WARMUP_CALLS` untimed calls)."""
    rng = np.random.default_rng(seed)
    result = {}
    for batch in batches:
        features = np.maximum(rng.standard_normal((batch, STREAM_WINDOW, feature_dim), dtype=np.float32), 0)
        times = time_call(lambda f=features: engine.infer(f), repeat=repeat, warmup=WARMUP_CALLS)
        result[int(batch)] = float(np.median(times) * 1e3)
    return result
