"""INT8 with explicit quantization: calibrated activations, per-channel weights, QuantizeLinear/DequantizeLinear.

The INT8 artifact (``<stem>.int8.onnx``) is the FP32 graph with Q/DQ nodes around the two temporal convolutions
of Φ (``conv1``, ``conv2``: all of the head's arithmetic but C / (3·(D + H)) of it):

- **weights**: symmetric per-output-channel int8 (``scale_c = max|W_c| / 127``, zero point 0), stored as int8
  initializers behind one ``DequantizeLinear(axis=0)``;
- **activations in**: symmetric per-tensor int8 (``scale = amax / 127``, zero point 0), one
  ``QuantizeLinear → DequantizeLinear`` pair directly in front of the convolution's input;
- **activations out**: the same kind of pair directly behind the convolution, before its LeakyReLU. ONNX
  Runtime fuses ``DQ(x), DQ(W) → Conv → Q`` into one ``QLinearConv`` (integer arithmetic, int8 output) and
  ``DQ → LeakyRelu → Q`` into ``QLinearLeakyRelu``; without the output Q it keeps a float ``Conv`` on
  dequantized tensors, which is no faster than FP32. TensorRT's explicit quantization takes the same layout
  (it fuses the output Q into the convolution and runs the activation in int8);
- ``amax`` is calibrated on real training features by running the FP32 graph. Convolution inputs: ``minmax``
  (the largest |x| seen) or ``percentile`` (that percentile of |x| from a histogram, which ignores rare
  outliers). Convolution outputs: the ``amax`` whose grid minimizes the squared error *after* the LeakyReLU that
  follows (:meth:`SignedRange.amax_after`), from histograms of the positive and the negative values. A
  pre-activation is mostly negative with a long negative tail that the activation shrinks a hundredfold, so a
  range set by |x| would spend the grid on values that hardly matter and cost accuracy (docs/design.md,
  Decisions, Export);
- the classifier (H → C, 1×1) and the transition (C → C, 1×1), the top-k, the softmax, the sigmoid and the
  graph's inputs and outputs stay float32: the classifier's output *is* the CAS that post-processing
  thresholds, and quantizing it per tensor would round every class's curve to one shared 8-bit grid for a layer
  that costs C / (3·(D + H)) of a temporal convolution pair; an int8 classifier with a float output would run in
  ONNX Runtime as a dequantize plus a float convolution, i.e. slower than leaving it alone.

This is the layout TensorRT's explicit quantization expects (symmetric int8, Q/DQ around the layers to run in
INT8; no implicit calibrator, which TensorRT 11 removed) and the one ONNX Runtime's QDQ fusion turns into integer
convolutions on the CPU. ``onnxruntime.quantization.quantize_static`` can emit Q/DQ too, but by default it
quantizes activations asymmetrically to uint8 and wraps more operators than the convolutions, and it has no way to
key and reuse a calibration; writing it here keeps the graph exactly as TensorRT wants it and lets the
calibration be cached.

The calibration (``amax`` of every convolution's input and output, in graph order) is cached as JSON under a key
made of the sha256 of the model, the sha256 of the calibration data and the method; a second export with the same
three skips the calibration run. Because it is keyed by convolution order, the ranges measured on the offline graph
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

from ecm_edge.architecture import TEMPORAL_CONVS
from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.io import atomic_write_json

log = logging.getLogger("ecm_edge")

INT8_MAX = 127
HISTOGRAM_BINS = 4096  # resolution of the |x| histogram of the percentile method
CALIBRATION_FORMAT = 2  # bump when the cached result's meaning changes (2: convolution outputs too)
FEW_CALIBRATION_VIDEOS = 100  # warn below this many calibration videos


@dataclass(frozen=True)
class CalibrationMethod:
    """How activation ranges are estimated."""

    name: str = "percentile"  # "minmax" | "percentile"
    percentile: float = 99.99  # used by "percentile"

    def describe(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "format": CALIBRATION_FORMAT, "scheme": "symmetric-int8",
                                "outputs": "mse-after-activation"}
        if self.name == "percentile":
            spec.update(percentile=self.percentile, bins=HISTOGRAM_BINS)
        return spec


@dataclass
class Calibration:
    """Calibrated activation ranges: ``amax[i]`` / ``output_amax[i]`` for the input / output of the i-th
    convolution in graph order."""

    amax: list[float]
    output_amax: list[float]
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


class SignedRange:
    """Histograms of a tensor's positive values and of its negative values' magnitudes, for a range chosen by the
    error that remains after the activation that follows."""

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.positive, self.negative = AbsRange(bins), AbsRange(bins)

    def add(self, values: np.ndarray) -> None:
        flat = values.astype(np.float32, copy=False).ravel()
        self.positive.add(flat[flat > 0])
        self.negative.add(-flat[flat < 0])

    def amax_after(self, slope: float = 1.0, candidates: int = 512) -> float:
        """The symmetric int8 range that minimizes the mean squared error of ``activation(dequantized x)``, with
        ``activation`` LeakyReLU(``slope``) (1: none): inside the range the error is the grid's rounding noise
        (step² / 12), outside it the clipped distance; negative values count ``slope²``."""
        top = max(self.positive.top, self.negative.top)
        if top == 0:
            return 0.0
        amax = top * np.arange(1, candidates + 1) / candidates  # [K]
        error = np.zeros(candidates)
        for estimator, weight in ((self.positive, 1.0), (self.negative, slope * slope)):
            if estimator.top == 0:
                continue
            centres = (np.arange(estimator.bins) + 0.5) * (estimator.top / estimator.bins)  # [B]
            clipped = np.maximum(centres[None, :] - amax[:, None], 0.0) ** 2  # [K, B]
            rounding = np.where(centres[None, :] > amax[:, None], 0.0, (amax[:, None] / INT8_MAX) ** 2 / 12)
            error += weight * ((clipped + rounding) @ estimator.counts)
        return float(amax[int(np.argmin(error))])


def conv_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == "Conv"]


def quantized_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The convolutions that run in int8: the first :data:`TEMPORAL_CONVS` (Φ's ``conv1``, ``conv2``), each
    followed by its LeakyReLU; the pointwise classifier and transition after them stay float (module doc)."""
    convs = conv_nodes(model)[:TEMPORAL_CONVS]
    consumers = {name: node for node in model.graph.node for name in node.input}
    for conv in convs:
        after = consumers.get(conv.output[0])
        if after is None or after.op_type != "LeakyRelu":
            raise EcmEdgeError(f"Conv {conv.name or conv.output[0]} is not followed by LeakyRelu; this is not the "
                               "ECM head's graph, refusing to quantize it")
    return convs


def activation_slope(model: onnx.ModelProto, conv: onnx.NodeProto) -> float:
    """The negative slope of the LeakyReLU that reads ``conv``'s output (LeakyRelu's ``alpha``, default 0.01);
    1.0 (no activation) when something else reads it."""
    for node in model.graph.node:
        if node.op_type == "LeakyRelu" and conv.output[0] in node.input:
            return next((float(a.f) for a in node.attribute if a.name == "alpha"), 0.01)
    return 1.0


def collect_ranges(model: onnx.ModelProto, videos: Iterable[np.ndarray],
                   progress: Callable[[int], None] | None = None
                   ) -> tuple[list[AbsRange], list[SignedRange], int]:
    """Run ``model`` (FP32, input ``features [1, T, D]``) on each video: the |x| ranges of every Conv input and
    the signed ranges of every Conv output, in graph order, and the number of snippets."""
    import onnxruntime as ort

    probe = _copy(model)
    convs = conv_nodes(probe)
    targets = [node.input[0] for node in convs] + [node.output[0] for node in convs]
    graph_inputs = {value.name for value in probe.graph.input}
    existing = {value.name for value in probe.graph.output}
    for name in targets:
        if name not in graph_inputs and name not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
            existing.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the probed tensors
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fetch = list(dict.fromkeys(name for name in targets if name not in graph_inputs))
    input_name = probe.graph.input[0].name
    inputs, outputs = [AbsRange() for _ in convs], [SignedRange() for _ in convs]
    snippets = 0
    for features in videos:
        batch = np.ascontiguousarray(features, dtype=np.float32)[None]
        values = dict(zip(fetch, session.run(fetch, {input_name: batch}), strict=True))
        values[input_name] = batch
        for estimator, name in zip([*inputs, *outputs], targets, strict=True):
            estimator.add(values[name])
        snippets += batch.shape[1]
        if progress is not None:
            progress(1)
    return inputs, outputs, snippets


def calibrate(model: onnx.ModelProto, videos: Sequence[tuple[str, np.ndarray]], method: CalibrationMethod,
              model_hash: str, cache_dir: str | Path | None = None,
              progress: Callable[[int], None] | None = None) -> Calibration:
    """Activation ranges of ``model``'s Conv inputs and outputs on ``videos``, from the cache when the key
    matches."""
    data_hash = hash_features(videos)
    key = calibration_key(model_hash, data_hash, method)
    cached = _read_cache(cache_dir, key)
    if cached is not None:
        log.info("INT8 calibration: cache hit %s (model, data and method unchanged)", key)
        return cached
    inputs, outputs, snippets = collect_ranges(model, (features for _, features in videos), progress)
    convs = conv_nodes(model)
    shapes = [_weight_shape(model, node) for node in convs]
    result = Calibration([float(r.amax(method)) for r in inputs],
                         [r.amax_after(activation_slope(model, conv)) for r, conv in zip(outputs, convs, strict=True)],
                         shapes, model_hash, data_hash, method.describe(), len(videos), snippets, key)
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
    """A copy of ``model`` with int8 Q/DQ around Φ's convolutions (module doc): per-channel weights, calibrated
    per-tensor activations on each convolution's input and output."""
    model = _copy(model)
    graph = model.graph
    convs = conv_nodes(model)
    shapes = [_weight_shape(model, node) for node in convs]
    if shapes != calibration.conv_weight_shapes:
        raise EcmEdgeError(f"the calibration {calibration.key} was measured on convolutions with weights "
                           f"{calibration.conv_weight_shapes}, this graph has {shapes}; calibrate this model again")
    initializers = {init.name: init for init in graph.initializer}
    activation_dq: dict[str, str] = {}
    before: dict[int, list[onnx.NodeProto]] = {}
    after: dict[int, list[onnx.NodeProto]] = {}
    chosen = {id(node) for node in quantized_convs(model)}
    for conv, amax_in, amax_out in zip(convs, calibration.amax, calibration.output_amax, strict=True):
        if id(conv) not in chosen:
            continue
        nodes: list[onnx.NodeProto] = []
        source = conv.input[0]
        if source not in activation_dq:
            activation_dq[source] = _quantize_activation(graph, source, amax_in, nodes)
        conv.input[0] = activation_dq[source]
        conv.input[1] = _quantize_weight(graph, initializers[conv.input[1]], nodes)
        before[id(conv)] = nodes
        output = conv.output[0]  # its consumers keep reading this name: the output DequantizeLinear's now
        conv.output[0] = f"{output}_float"
        after[id(conv)] = []
        _quantize_activation(graph, conv.output[0], amax_out, after[id(conv)], restored=output)
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.extend(before.get(id(node), []))
        ordered.append(node)
        ordered.extend(after.get(id(node), []))
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model, full_check=True)
    return model


# -- what ONNX Runtime makes of it -------------------------------------------------------------------------------
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")  # integer arithmetic in ORT's graph


def onnxruntime_ops(model_path: str | Path) -> dict[str, int]:
    """The operators of ONNX Runtime's optimized CPU graph of ``model_path`` (what it executes), counted.

    Read from the graph ONNX Runtime writes with ``optimized_model_filepath`` at ``ORT_ENABLE_EXTENDED`` (the
    level that applies the QDQ fusions; ``ALL`` only adds layout changes specific to this machine's CPU)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ecm-ort-graph-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def quantization_entry(model_path: str | Path) -> dict[str, Any]:
    """The manifest's ``quantization`` entry of an INT8 graph: its layout, and how many of its quantized
    convolutions ONNX Runtime (this version, CPU) runs as integer operators."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    producers = {name: node.op_type for node in model.graph.node for name in node.output}
    convs = conv_nodes(model)
    quantized = [conv for conv in convs if producers.get(conv.input[1]) == "DequantizeLinear"]
    ops = onnxruntime_ops(model_path)
    return {"layout": "qdq-conv-in-out", "weights": "int8 symmetric per output channel",
            "activations": "int8 symmetric per tensor", "quantized_convs": len(quantized),
            "float_convs": len(convs) - len(quantized),
            "onnxruntime": ort.__version__,
            "onnxruntime_integer_ops": sum(ops.get(op, 0) for op in INTEGER_OPS),
            "onnxruntime_ops": ops}


def _quantize_activation(graph: onnx.GraphProto, name: str, amax: float, nodes: list[onnx.NodeProto],
                         restored: str | None = None) -> str:
    """Append ``name → QuantizeLinear → DequantizeLinear → restored`` (default ``<name>_dq``) to ``nodes``."""
    scale = np.float32(max(amax, 1e-12) / INT8_MAX)
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{name}_act_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{name}_act_zero")])
    quantized, restored = f"{name}_q", restored or f"{name}_dq"
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
