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
    AbsRange,
    CalibrationMethod,
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


@pytest.mark.parametrize("graph", ["offline", "streaming"])
def test_every_conv_has_explicit_symmetric_qdq(int8_export, graph):
    _, result, _, _, _ = int8_export
    model = onnx.load(str(result.artifact(graph, "int8")))
    nodes = list(model.graph.node)
    producers = {out: node for node in nodes for out in node.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 4  # conv1, conv2, classifier, transition
    for conv in convs:
        act_dq, weight_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert act_dq.op_type == weight_dq.op_type == "DequantizeLinear"
        assert producers[act_dq.input[0]].op_type == "QuantizeLinear"
        assert inits[act_dq.input[1]].shape == () and inits[act_dq.input[2]] == 0  # per tensor, symmetric
        weight, scale, zero = (inits[name] for name in weight_dq.input)
        assert weight.dtype == np.int8 and np.abs(weight).max() == 127  # the largest weight maps to ±127
        assert scale.shape == (weight.shape[0],) and not zero.any()  # per output channel, symmetric
        assert next(a.i for a in weight_dq.attribute if a.name == "axis") == 0


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
