"""INT8 export: calibration on real (synthetic-dataset) features, the cache, Q/DQ layout, accuracy."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from ecm_edge.config import load_config
from ecm_edge.data.dataset import VideoDataset
from ecm_edge.data.synth import SynthSettings, generate_dataset
from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.export.int8 import (
    INTEGER_OPS,
    AbsRange,
    CalibrationMethod,
    SignedRange,
    calibrate,
    calibration_key,
    check_calibration_videos,
    hash_features,
    quantize_qdq,
)
from ecm_edge.export.pipeline import ExportRequest, run_export
from ecm_edge.manifest import verify_artifact
from ecm_edge.train.deploy import save_deploy
from ecm_edge.train.model import ECM, ECMDims

D, H, C = 32, 48, 5
OVERRIDES = [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}", "data.t_fixed=64"]


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """A synthetic dataset (real files, D=32), a random small ECM and its int8 export calibrated on the data."""
    root = tmp_path_factory.mktemp("int8")
    generate_dataset(root / "data", SynthSettings.from_preset("small", num_classes=C, feature_dim=D, num_videos=15))
    cfg = load_config("small", OVERRIDES)
    torch.manual_seed(3)
    model = ECM(ECMDims.from_config(cfg)).eval()
    train = VideoDataset.open(root / "data", cfg, "train")
    save_deploy(model, train.class_names, cfg, root / "run")
    steps = []
    result = run_export(ExportRequest(checkpoint=root / "run", out_dir=root / "out", precision="int8",
                                      calib_data=root / "data", engine=False), on_step=steps.append)
    videos = [(v, np.asarray(train.features(v))) for v in train.video_ids]
    return model, result, steps, videos, root


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_int8_artifacts_are_written_with_calibration_in_their_manifests(int8_export):
    _, result, steps, videos, root = int8_export
    names = sorted(p.name for p in result.artifacts)
    assert names == ["ecm.int8.onnx", "ecm.onnx", "ecm.stream.int8.onnx", "ecm.stream.onnx"]
    manifest = verify_artifact(result.artifact("offline", "int8"), precision="int8")
    assert manifest.calibration["data_hash"] == hash_features(videos)
    assert manifest.calibration["videos"] == len(videos)
    assert manifest.calibration["method"]["name"] == "percentile"
    assert any(s.what.startswith("int8 calibration") for s in steps)
    assert (root / "out" / "calibration" / f"{manifest.calibration['cache_key']}.json").is_file()


def _pair_before(node_input: str, producers, inits) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The QuantizeLinear → DequantizeLinear pair that produces ``node_input``, checked per tensor, symmetric."""
    dq = producers[node_input]
    q = producers[dq.input[0]]
    assert (q.op_type, dq.op_type) == ("QuantizeLinear", "DequantizeLinear")
    assert list(q.input[1:]) == list(dq.input[1:])  # one scale, one zero point: a matched pair
    scale, zero = inits[dq.input[1]], inits[dq.input[2]]
    assert scale.shape == () and scale > 0 and zero.shape == () and zero.dtype == np.int8 and zero == 0
    return q, dq


@pytest.mark.parametrize("graph", ["offline", "streaming"])
def test_int8_qdq_placement_is_the_one_integer_kernels_fuse(int8_export, graph):
    """conv1 and conv2: DQ(Q(x)) on the input, a DQ'd per-channel int8 weight, Q → DQ right after the output, and
    nothing in between (the layout ONNX Runtime's QDQ → QLinearConv fusion and TensorRT's explicit quantization
    both take); the pointwise classifier and transition stay float32."""
    _, result, _, _, _ = int8_export
    model = onnx.load(str(result.artifact(graph, "int8")))
    nodes = list(model.graph.node)
    producers = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 4  # conv1, conv2, classifier, transition
    for conv in convs[:2]:
        _, act_dq = _pair_before(conv.input[0], producers, inits)
        assert consumers[act_dq.output[0]] == [conv]
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and consumers[weight_dq.output[0]] == [conv]
        weight, scale, zero = (inits[name] for name in weight_dq.input)
        assert weight.dtype == np.int8 and np.abs(weight).max() == 127  # the largest weight maps to ±127
        assert scale.shape == (weight.shape[0],) and zero.dtype == np.int8 and not zero.any()  # per out channel
        assert next(a.i for a in weight_dq.attribute if a.name == "axis") == 0
        assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32  # the bias stays float
        (out_q,) = consumers[conv.output[0]]
        assert out_q.op_type == "QuantizeLinear"
        (out_dq,) = consumers[out_q.output[0]]
        _pair_before(out_dq.output[0], producers, inits)
        assert [n.op_type for n in consumers[out_dq.output[0]]] == ["LeakyRelu"]
    for conv in convs[2:]:
        assert producers.get(conv.input[0]) is None or producers[conv.input[0]].op_type != "DequantizeLinear"
        assert inits[conv.input[1]].dtype == np.float32
    ops = [n.op_type for n in nodes]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 6


@pytest.mark.parametrize("graph", ["offline", "streaming"])
def test_onnxruntime_runs_the_int8_convolutions_as_integer_operators(int8_export, graph, tmp_path):
    """ONNX Runtime's optimized graph, saved by ONNX Runtime itself, has integer convolutions where the Q/DQ
    pairs were, and the manifest records it."""
    _, result, _, _, _ = int8_export
    path = result.artifact(graph, "int8")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    integer = [op for op in ops if op in INTEGER_OPS]
    assert len(integer) == 2, ops  # conv1 and conv2
    assert sum(op in ("Conv", "FusedConv") for op in ops) == 2, ops  # the float classifier and transition
    entry = verify_artifact(path, precision="int8").quantization
    assert entry["quantized_convs"] == entry["onnxruntime_integer_ops"] == 2 and entry["float_convs"] == 2


def test_int8_stays_close_to_fp32_on_real_features(int8_export):
    _, result, _, videos, _ = int8_export
    x = videos[0][1][None].astype(np.float32)
    fp32_cas, fp32_scores, fp32_weights = session(result.artifact("offline", "fp32")).run(None, {"features": x})
    int8_cas, int8_scores, int8_weights = session(result.artifact("offline", "int8")).run(None, {"features": x})
    relative = np.abs(int8_cas - fp32_cas).max() / np.abs(fp32_cas).max()
    assert 0 < relative < 0.1  # quantized (not identical), and close
    assert 0 < np.abs(int8_weights - fp32_weights).max() < 0.1  # W ∈ (0, 1): the cas bound at scale 1
    assert np.abs(int8_scores - fp32_scores).max() < 0.01
    stream, stream_weights = session(result.artifact("streaming", "int8")).run(None, {"features": x})
    np.testing.assert_allclose(stream[0], int8_cas[0, 2:-2], atol=1e-5)  # same ranges, same columns
    np.testing.assert_allclose(stream_weights[0], int8_weights[0, 2:-2], atol=1e-5)


def test_calibration_is_cached_by_model_data_and_method(int8_export, tmp_path):
    _, result, _, videos, _ = int8_export
    model = onnx.load(str(result.artifact("offline", "fp32")))
    method = CalibrationMethod("minmax")
    first = calibrate(model, videos, method, "model-a", tmp_path)
    again = calibrate(model, videos, method, "model-a", tmp_path)
    assert not first.from_cache and again.from_cache and again.amax == first.amax
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert calibrate(model, videos[:-1], method, "model-a", tmp_path).key != first.key
    assert calibrate(model, videos, method, "model-b", tmp_path).key != first.key
    percentile = calibrate(model, videos, CalibrationMethod("percentile", 99.0), "model-a", tmp_path)
    assert percentile.key != first.key and not percentile.from_cache
    assert all(p <= m for p, m in zip(percentile.amax, first.amax, strict=True))
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_minmax_range_is_the_largest_magnitude(int8_export):
    _, result, _, videos, _ = int8_export
    calibration = calibrate(onnx.load(str(result.artifact("offline", "fp32"))), videos, CalibrationMethod("minmax"),
                            "m")
    assert calibration.amax[0] == pytest.approx(max(np.abs(f).max() for _, f in videos))


def test_second_export_reuses_the_cached_calibration(int8_export):
    _, _, _, _, root = int8_export
    steps = []
    run_export(ExportRequest(checkpoint=root / "run", out_dir=root / "out", precision="int8",
                             calib_data=root / "data", engine=False), on_step=steps.append)
    (line,) = [s.what for s in steps if s.what.startswith("int8 calibration")]
    assert "cached" in line


def test_calibration_keys_differ_for_the_method():
    assert calibration_key("m", "d", CalibrationMethod("minmax")) != calibration_key("m", "d", CalibrationMethod())
    assert calibration_key("m", "d", CalibrationMethod()) == calibration_key("m", "d", CalibrationMethod())


def test_empty_calibration_data_is_an_error():
    with pytest.raises(DataError, match="no calibration features"):
        check_calibration_videos([], D, "data/x")


def test_few_calibration_videos_warn(caplog):
    videos = [("v0", np.ones((10, D), np.float32))]
    logger = logging.getLogger("ecm_edge")
    logger.addHandler(caplog.handler)  # also when a CLI test before this one stopped propagation
    try:
        with caplog.at_level(logging.WARNING, logger="ecm_edge"):
            check_calibration_videos(videos, D, "data/x")
    finally:
        logger.removeHandler(caplog.handler)
    assert "only 1 videos" in caplog.text


def test_malformed_calibration_features_are_refused():
    with pytest.raises(DataError, match=r"video v1 .* expected \[T ≥ 1, 32\]"):
        check_calibration_videos([("v1", np.ones((10, 16), np.float32))], D, "data/x")


def test_int8_export_without_calibration_data_says_what_to_pass(int8_export, tmp_path):
    _, _, _, _, root = int8_export
    with pytest.raises(DataError, match="--calib-data"):
        run_export(ExportRequest(checkpoint=root / "run", out_dir=tmp_path, precision="int8", engine=False))


def test_calibration_measured_on_another_model_is_refused(int8_export, tmp_path):
    _, result, _, videos, _ = int8_export
    calibration = calibrate(onnx.load(str(result.artifact("offline", "fp32"))), videos, CalibrationMethod("minmax"),
                            "m")
    torch.manual_seed(0)
    other = ECM(ECMDims(D, 2 * H, C, 8))
    from ecm_edge.export.onnx_export import export_graph

    path = export_graph(other, tmp_path / "other.onnx")
    with pytest.raises(EcmEdgeError, match="calibrate this model again"):
        quantize_qdq(onnx.load(str(path)), calibration)


def test_abs_range_percentile_and_widening():
    estimator = AbsRange(bins=1000)
    estimator.add(np.arange(0, 500, dtype=np.float32))
    estimator.add(-np.arange(500, 1000, dtype=np.float32))  # widens the range: earlier counts are re-binned
    assert estimator.amax(CalibrationMethod("minmax")) == 999
    assert estimator.counts.sum() == 1000
    assert estimator.amax(CalibrationMethod("percentile", 90.0)) == pytest.approx(900, abs=3)


def test_output_range_is_chosen_for_the_activation_that_follows():
    """A pre-activation range spends its grid where the LeakyReLU keeps the values: the positive side."""
    estimator = SignedRange()
    estimator.add(np.linspace(0, 10, 10_000, dtype=np.float32))
    estimator.add(-np.linspace(0, 100, 10_000, dtype=np.float32))
    relu, leaky, identity = estimator.amax_after(0.0), estimator.amax_after(0.01), estimator.amax_after(1.0)
    assert relu == pytest.approx(10, abs=0.5)  # negatives do not matter after a ReLU
    assert relu < leaky < identity and identity > 95  # without an activation: the whole range
