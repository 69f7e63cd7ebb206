"""INT8 with explicit quantization: calibrated activations, per-channel weights, QuantizeLinear/DequantizeLinear.

The INT8 artifact (``<stem>.int8.onnx``) is the FP32 graph with Q/DQ nodes in front of every convolution:

- **weights**: symmetric per-output-channel int8 (``scale_c = max|W_c| / 127``, zero point 0), stored as int8
  initializers behind one ``DequantizeLinear(axis=0)``;
- **activations**: symmetric per-tensor int8 (``scale = amax / 127``), one ``QuantizeLinear → DequantizeLinear``
  pair on each convolution's input, with ``amax`` calibrated on real training features by running the FP32 graph
  (``minmax``: the largest |x| seen; ``percentile``: that percentile of |x| from a histogram, which ignores rare
  outliers);
- biases, the top-k, the softmax and the graph's inputs/outputs stay float32.

This is the layout TensorRT's explicit quantization expects (symmetric int8, Q/DQ around the layers to run in
INT8; no implicit calibrator, which TensorRT 11 removed), and ONNX Runtime fuses it into integer convolutions on
the CPU. ``onnxruntime.quantization.quantize_static`` can emit Q/DQ too, but by default it quantizes activations
asymmetrically to uint8 and wraps more operators than the convolutions, and it has no way to key and reuse a
calibration; writing the ~100 lines here keeps the graph exactly as TensorRT wants it and lets the calibration be
cached.

The calibration (one ``amax`` per convolution input, in graph order) is cached as JSON under a key made of the
sha256 of the model, the sha256 of the calibration data and the method; a second export with the same three
skips the calibration run. Because it is keyed by convolution order, the ranges measured on the offline graph
also quantize the streaming graph (same convolutions, same weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.io import atomic_write_json

log = logging.getLogger("ecm_edge")

INT8_MAX = 127
HISTOGRAM_BINS = 4096  # resolution of the |x| histogram of the percentile method
CALIBRATION_FORMAT = 1  # bump when the cached result's meaning changes
FEW_CALIBRATION_VIDEOS = 100  # warn below this many calibration videos


@dataclass(frozen=True)
class CalibrationMethod:
    """How activation ranges are estimated."""

    name: str = "percentile"  # "minmax" | "percentile"
    percentile: float = 99.99  # used by "percentile"

    def describe(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "format": CALIBRATION_FORMAT, "scheme": "symmetric-int8"}
        if self.name == "percentile":
            spec.update(percentile=self.percentile, bins=HISTOGRAM_BINS)
        return spec


@dataclass
class Calibration:
    """Calibrated activation ranges: ``amax[i]`` for the input of the i-th convolution in graph order."""

    amax: list[float]
    conv_weight_shapes: list[list[int]]  # sanity check when applying to a graph
    model_hash: str
    data_hash: str
    method: dict[str, Any]
    videos: int
    snippets: int
    key: str
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("from_cache")
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibration:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name != "from_cache"})

    def manifest_entry(self) -> dict[str, Any]:
        return {"data_hash": self.data_hash, "method": self.method, "videos": self.videos,
                "snippets": self.snippets, "cache_key": self.key, "model_hash": self.model_hash}


# -- calibration data -------------------------------------------------------------------------------------------
def hash_features(videos: Sequence[tuple[str, np.ndarray]]) -> str:
    """sha256 over the calibration videos in order: id, shape and float32 bytes."""
    digest = hashlib.sha256()
    for vid, features in videos:
        array = np.ascontiguousarray(features, dtype=np.float32)
        digest.update(vid.encode())
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_calibration_videos(videos: Sequence[tuple[str, np.ndarray]], feature_dim: int, source: str) -> None:
    """Refuse an empty or malformed calibration set; warn when it is small."""
    if not videos:
        raise DataError(f"no calibration features in {source}; INT8 needs real training features: pass "
                        "--calib-data DIR (a dataset with a training split) or export fp16/fp32 instead")
    for vid, features in videos:
        if features.ndim != 2 or features.shape[1] != feature_dim or features.shape[0] == 0:
            raise DataError(f"calibration video {vid} in {source} has features of shape {features.shape}; "
                            f"expected [T ≥ 1, {feature_dim}]")
        if not np.isfinite(features).all():
            raise DataError(f"calibration video {vid} in {source} has NaN or infinite features")
    if len(videos) < FEW_CALIBRATION_VIDEOS:
        log.warning("INT8 calibration uses only %d videos from %s (fewer than %d); the activation ranges may not "
                    "cover the deployment data", len(videos), source, FEW_CALIBRATION_VIDEOS)


def calibration_key(model_hash: str, data_hash: str, method: CalibrationMethod) -> str:
    text = json.dumps({"model": model_hash, "data": data_hash, "method": method.describe()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# -- range estimation -------------------------------------------------------------------------------------------
class AbsRange:
    """Running estimate of a tensor's |x| range: its maximum, and a histogram for percentiles."""

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.bins = bins
        self.top = 0.0
        self.counts = np.zeros(bins, np.float64)

    def add(self, values: np.ndarray) -> None:
        magnitudes = np.abs(values.astype(np.float32, copy=False)).ravel()
        peak = float(magnitudes.max(initial=0.0))
        if peak > self.top:
            self._widen(peak)
        if self.top > 0:
            self.counts += np.histogram(magnitudes, self.bins, (0.0, self.top))[0]

    def _widen(self, top: float) -> None:
        """Re-bin the counts so far onto [0, top] (their mass moves with their bin centres)."""
        if self.counts.any():
            centres = (np.arange(self.bins) + 0.5) * (self.top / self.bins)
            self.counts = np.histogram(centres, self.bins, (0.0, top), weights=self.counts)[0]
        self.top = top

    def amax(self, method: CalibrationMethod) -> float:
        if method.name == "minmax" or self.top == 0:
            return self.top
        cdf = np.cumsum(self.counts) / self.counts.sum()
        index = int(np.searchsorted(cdf, method.percentile / 100.0))
        return min(self.top, (index + 1) * self.top / self.bins)


def conv_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == "Conv"]


def collect_ranges(model: onnx.ModelProto, videos: Iterable[np.ndarray],
                   progress: Callable[[int], None] | None = None) -> tuple[list[AbsRange], int]:
    """Run ``model`` (FP32, input ``features [1, T, D]``) on each video; |x| ranges of every Conv input."""
    import onnxruntime as ort

    probe = _copy(model)
    targets = [node.input[0] for node in conv_nodes(probe)]
    graph_inputs = {value.name for value in probe.graph.input}
    existing = {value.name for value in probe.graph.output}
    for name in targets:
        if name not in graph_inputs and name not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
            existing.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the probed tensors
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fetch = [name for name in targets if name not in graph_inputs]
    input_name = probe.graph.input[0].name
    ranges = [AbsRange() for _ in targets]
    snippets = 0
    for features in videos:
        batch = np.ascontiguousarray(features, dtype=np.float32)[None]
        values = dict(zip(fetch, session.run(fetch, {input_name: batch}), strict=True))
        values[input_name] = batch
        for estimator, name in zip(ranges, targets, strict=True):
            estimator.add(values[name])
        snippets += batch.shape[1]
        if progress is not None:
            progress(1)
    return ranges, snippets


def calibrate(model: onnx.ModelProto, videos: Sequence[tuple[str, np.ndarray]], method: CalibrationMethod,
              model_hash: str, cache_dir: str | Path | None = None,
              progress: Callable[[int], None] | None = None) -> Calibration:
    """Activation ranges of ``model``'s Conv inputs on ``videos``, from the cache when the key matches."""
    data_hash = hash_features(videos)
    key = calibration_key(model_hash, data_hash, method)
    cached = _read_cache(cache_dir, key)
    if cached is not None:
        log.info("INT8 calibration: cache hit %s (model, data and method unchanged)", key)
        return cached
    ranges, snippets = collect_ranges(model, (features for _, features in videos), progress)
    shapes = [_weight_shape(model, node) for node in conv_nodes(model)]
    result = Calibration([float(r.amax(method)) for r in ranges], shapes, model_hash, data_hash, method.describe(),
                         len(videos), snippets, key)
    if cache_dir is not None:
        atomic_write_json(Path(cache_dir) / f"{key}.json", result.to_dict())
    return result


def _read_cache(cache_dir: str | Path | None, key: str) -> Calibration | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.json"
    if not path.is_file():
        return None
    try:
        result = Calibration.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable calibration cache %s (%s); calibrating again", path, exc)
        return None
    result.from_cache = True
    return result


# -- Q/DQ insertion ---------------------------------------------------------------------------------------------
def quantize_qdq(model: onnx.ModelProto, calibration: Calibration) -> onnx.ModelProto:
    """A copy of ``model`` with int8 Q/DQ on every Conv (per-channel weights, calibrated activations)."""
    model = _copy(model)
    graph = model.graph
    convs = conv_nodes(model)
    shapes = [_weight_shape(model, node) for node in convs]
    if shapes != calibration.conv_weight_shapes:
        raise EcmEdgeError(f"the calibration {calibration.key} was measured on convolutions with weights "
                           f"{calibration.conv_weight_shapes}, this graph has {shapes}; calibrate this model again")
    initializers = {init.name: init for init in graph.initializer}
    activation_dq: dict[str, str] = {}
    inserted: dict[int, list[onnx.NodeProto]] = {}
    for conv, amax in zip(convs, calibration.amax, strict=True):
        before: list[onnx.NodeProto] = []
        source = conv.input[0]
        if source not in activation_dq:
            activation_dq[source] = _quantize_activation(graph, source, amax, before)
        conv.input[0] = activation_dq[source]
        conv.input[1] = _quantize_weight(graph, initializers[conv.input[1]], before)
        inserted[id(conv)] = before
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.extend(inserted.get(id(node), []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model, full_check=True)
    return model


def _quantize_activation(graph: onnx.GraphProto, name: str, amax: float, nodes: list[onnx.NodeProto]) -> str:
    scale = np.float32(max(amax, 1e-12) / INT8_MAX)
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{name}_act_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{name}_act_zero")])
    quantized, restored = f"{name}_q", f"{name}_dq"
    nodes.append(helper.make_node("QuantizeLinear", [name, f"{name}_act_scale", f"{name}_act_zero"], [quantized],
                                  name=f"quantize_{name}"))
    nodes.append(helper.make_node("DequantizeLinear", [quantized, f"{name}_act_scale", f"{name}_act_zero"],
                                  [restored], name=f"dequantize_{name}"))
    return restored


def _quantize_weight(graph: onnx.GraphProto, weight: onnx.TensorProto, nodes: list[onnx.NodeProto]) -> str:
    values = numpy_helper.to_array(weight).astype(np.float32)
    if values.dtype != np.float32 or weight.data_type != TensorProto.FLOAT:
        raise EcmEdgeError(f"INT8 quantization expects float32 weights, {weight.name} is not")
    amax = np.abs(values.reshape(values.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    shaped = scale.reshape((-1,) + (1,) * (values.ndim - 1))
    quantized = np.clip(np.round(values / shaped), -INT8_MAX, INT8_MAX).astype(np.int8)
    name = weight.name
    graph.initializer.remove(weight)
    graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                              numpy_helper.from_array(scale, f"{name}_scale"),
                              numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero")])
    restored = f"{name}_dq"
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                  [restored], axis=0, name=f"dequantize_{name}"))
    return restored


def _weight_shape(model: onnx.ModelProto, conv: onnx.NodeProto) -> list[int]:
    for init in model.graph.initializer:
        if init.name == conv.input[1]:
            return list(init.dims)
    raise EcmEdgeError(f"Conv {conv.name or conv.output[0]} has no constant weight; cannot quantize it")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
