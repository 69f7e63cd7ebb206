"""Inference engines: one protocol, the torch model as the oracle, manifest checks before loading, no torch import."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ecm_edge.config import load_config
from ecm_edge.errors import CheckpointError, ConfigError, DataError, EcmEdgeError
from ecm_edge.export.pipeline import ExportRequest, run_export
from ecm_edge.runtime.engines import (
    Engine,
    choose_precision,
    engine_for,
    list_artifacts,
    load_engine,
    precision_report,
    select_artifact,
)
from ecm_edge.runtime.engines.cuda_buffers import device_pointer, stream_handle
from ecm_edge.runtime.engines.onnxruntime_engine import choose_providers
from ecm_edge.runtime.localizer import Localizer
from ecm_edge.train.deploy import save_deploy
from ecm_edge.train.model import ECM, ECMDims

D, C = 32, 6
TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    cfg = load_config("small", [f"data.feature_dim={D}", "model.hidden_dim=40", f"model.num_classes={C}",
                                "data.t_fixed=48"])
    torch.manual_seed(7)
    model = ECM(ECMDims.from_config(cfg)).eval()
    save_deploy(model, [f"c{i}" for i in range(C)], cfg, root / "run")
    result = run_export(ExportRequest(root / "run", root / "out", precision="fp16", engine=None))
    return root, model, result


def artifact_for(export_dir, engine: str, graph: str):
    root, _, result = export_dir
    if engine == "torch":
        return root / "run"
    if engine == "tensorrt":
        if not TENSORRT_INSTALLED:
            pytest.skip("TensorRT is not installed (engines are built and run only where it is)")
        path = result.artifact(graph, "fp16", kind="engine")
        if path is None:
            pytest.skip("no engine was built (no CUDA GPU visible)")
        return path
    return result.artifact(graph, "fp32")


def open_engine(export_dir, engine: str, graph: str):
    artifact = artifact_for(export_dir, engine, graph)
    options = {"graph": graph} if engine == "torch" else {}
    return load_engine(artifact, engine=engine, **options)


def reference(model: ECM, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        cas, scores, weights = model.export_forward(torch.from_numpy(x), with_weights=True)
    return {"cas": cas.numpy(), "video_scores": scores.numpy(), "weights": weights.numpy()}


def features(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).standard_normal((batch, length, D)), 0).astype(np.float32)


ENGINES = ["onnxruntime", "torch", "tensorrt"]


@pytest.mark.parametrize("engine", ENGINES)
def test_offline_outputs_match_the_torch_model(export_dir, engine):
    _, model, _ = export_dir
    with open_engine(export_dir, engine, "offline") as runner:
        assert isinstance(runner, Engine)
        assert runner.input_names == ["features"] and runner.output_names == ["cas", "video_scores", "weights"]
        for batch, length in ((1, 1), (2, 48), (1, 300)):
            x = features(batch, length, seed=length)
            shapes = runner.set_shapes({"features": x.shape})
            assert shapes == {"cas": (batch, length, C), "video_scores": (batch, C), "weights": (batch, length, C)}
            out = runner.infer(x)
            tolerance = 2e-2 if engine == "tensorrt" else 1e-5  # the engine is fp16
            for name, expected in reference(model, x).items():
                assert out[name].shape == shapes[name] and out[name].dtype == np.float32
                np.testing.assert_allclose(out[name], expected, atol=tolerance)


@pytest.mark.parametrize("engine", ENGINES)
def test_streaming_window_gives_the_valid_centre_columns(export_dir, engine):
    _, model, _ = export_dir
    x = features(1, 30, seed=3)
    full = reference(model, x)
    with open_engine(export_dir, engine, "streaming") as runner:
        assert runner.manifest.streaming["min_window"] == 5
        tolerance = 2e-2 if engine == "tensorrt" else 1e-5
        for start, width in ((0, 5), (10, 5), (4, 20)):
            out = runner.infer(x[:, start:start + width])
            assert set(out) == {"cas", "weights"} and out["cas"].shape == out["weights"].shape == (1, width - 4, C)
            for name in ("cas", "weights"):
                np.testing.assert_allclose(out[name][0], full[name][0, start + 2:start + width - 2], atol=tolerance)
        with pytest.raises(DataError, match="at least 5 snippets"):
            runner.infer(x[:, :4])


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_features_of_another_dimension_are_refused(export_dir, engine):
    with open_engine(export_dir, engine, "offline") as runner, pytest.raises(DataError, match="features of another"):
        runner.infer(np.zeros((1, 10, D + 1), np.float32))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_runs_each_precision_and_refuses_the_wrong_one(export_dir, precision):
    _, model, result = export_dir
    path = result.artifact("offline", precision)
    runner = load_engine(path, precision=precision, providers="cpu", threads=1)
    x = features(1, 48)
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    np.testing.assert_allclose(runner.infer(x)["cas"], reference(model, x)["cas"], atol=tolerance)
    other = "fp16" if precision == "fp32" else "fp32"
    with pytest.raises(CheckpointError, match=f"{other} was asked for"):
        load_engine(path, precision=other)


def test_tampered_onnx_is_refused_by_the_runtime(export_dir, tmp_path):
    _, _, result = export_dir
    source = result.artifact("offline", "fp32")
    copy = tmp_path / source.name
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    (tmp_path / (source.name + ".json")).write_bytes((source.parent / (source.name + ".json")).read_bytes())
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        load_engine(copy)
    copy.write_bytes(source.read_bytes())  # restored byte for byte: accepted again
    load_engine(copy).close()


def test_engine_is_chosen_by_suffix(export_dir):
    root, _, result = export_dir
    assert engine_for(result.artifact("offline", "fp32")) == "onnxruntime"
    assert engine_for(root / "out" / "ecm.fp16.engine") == "tensorrt"
    assert engine_for(root / "run") == "torch"
    assert engine_for(root / "run" / "model.safetensors") == "torch"
    with pytest.raises(CheckpointError, match="cannot tell"):
        engine_for(root / "weights.bin")
    with pytest.raises(EcmEdgeError, match="cannot run"):
        load_engine(result.artifact("offline", "fp32"), engine="torch")
    with pytest.raises(EcmEdgeError, match="unknown engine"):
        load_engine(result.artifact("offline", "fp32"), engine="openvino")


def test_select_artifact_from_an_export_folder(export_dir):
    root, _, _ = export_dir
    folder = root / "out"
    assert {(m.graph, m.precision) for m in list_artifacts(folder)} == {
        ("offline", "fp32"), ("offline", "fp16"), ("streaming", "fp32"), ("streaming", "fp16")}
    assert select_artifact(folder, "offline", kind="onnx").name == "ecm.onnx"
    assert select_artifact(folder, "streaming", "fp16", kind="onnx").name == "ecm.stream.fp16.onnx"
    with pytest.raises(CheckpointError, match="no int8 offline artifact"):
        select_artifact(folder, "offline", "int8")


def test_torch_engine_refuses_precisions_it_cannot_run(export_dir):
    root, _, _ = export_dir
    with pytest.raises(EcmEdgeError, match="fp16"):
        load_engine(root / "run", precision="fp16")


def test_provider_choice():
    assert choose_providers(["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "auto") == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(EcmEdgeError, match="onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], "cuda")


def test_host_only_engine_says_so_for_device_buffers(export_dir):
    _, _, result = export_dir
    runner = load_engine(result.artifact("offline", "fp32"), providers="cpu")
    assert not runner.supports_device_buffers
    with pytest.raises(EcmEdgeError, match="host arrays only"):
        runner.infer_device({"features": object()})


class _CudaStreamProtocol:
    def __cuda_stream__(self):
        return (0, 0xBEEF)


@pytest.mark.parametrize(("stream", "handle"), [(None, 0), (1234, 1234), (ctypes.c_void_p(5678), 5678),
                                                (ctypes.c_void_p(None), 0), (_CudaStreamProtocol(), 0xBEEF)])
def test_stream_handles(stream, handle):
    assert stream_handle(stream) == handle


def test_device_pointer_reads_the_cuda_array_interface():
    class FakeDeviceArray:  # the interface only; no memory behind it, nothing dereferences it
        def __init__(self, strides):
            self.__cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (4096, False),
                                             "version": 3, "strides": strides}

    assert device_pointer(FakeDeviceArray(None)) == 4096
    assert device_pointer(FakeDeviceArray((12, 4))) == 4096
    with pytest.raises(DataError, match="not C-contiguous"):
        device_pointer(FakeDeviceArray((4, 8)))
    with pytest.raises(DataError, match="not a device array"):
        device_pointer(np.zeros(3))


def test_runtime_engines_run_without_torch(export_dir):
    _, _, result = export_dir
    code = (
        "import sys, numpy as np\n"
        "from ecm_edge.runtime.engines import load_engine, select_artifact\n"
        "import ecm_edge.runtime.engines.tensorrt_engine, ecm_edge.export.torch_engine\n"
        f"runner = load_engine({str(result.artifact('offline', 'fp16'))!r})\n"
        f"out = runner.infer(np.ones((1, 9, {D}), np.float32))\n"
        f"assert out['cas'].shape == (1, 9, {C}), out['cas'].shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- which precision runs -------------------------------------------------------------------------------------------
VNNI, AVX2_ONLY, NO_INT8 = {"AVX2", "AVX512VNNI"}, {"AVX2"}, {"SSE2", "SSE41"}


@pytest.fixture(scope="module")
def precisions_dir(export_dir):
    """One export folder with fp32, fp16 and int8 graphs of the export_dir weights (int8 calibrated on a small
    synthetic dataset of the same D)."""
    from ecm_edge.data.synth import SynthSettings, generate_dataset

    root, _, _ = export_dir
    generate_dataset(root / "data", SynthSettings.from_preset("small", num_classes=C, feature_dim=D, num_videos=12))
    for precision in ("int8", "fp16"):
        run_export(ExportRequest(root / "run", root / "all", precision=precision, calib_data=root / "data",
                                 engine=False))
    return root / "all"


def test_auto_runs_int8_on_a_cpu_with_integer_dot_products_and_fp32_otherwise(precisions_dir):
    for features_, isa in ((VNNI, "AVX512-VNNI"), (AVX2_ONLY, "AVX2")):
        choice = choose_precision(precisions_dir, cpu_features=features_)
        assert (choice.precision, choice.kind) == ("int8", "onnx") and isa in choice.reason
    choice = choose_precision(precisions_dir, cpu_features=NO_INT8)
    assert choice.precision == "fp32" and "integer dot-product" in choice.reason


def test_auto_never_picks_fp16_on_a_cpu(export_dir):
    root, _, _ = export_dir  # fp32 and fp16 only
    for features_ in (VNNI, NO_INT8):
        choice = choose_precision(root / "out", cpu_features=features_)
        assert choice.precision == "fp32" and "no int8" in choice.reason


def test_an_explicit_precision_is_honoured_or_refused(precisions_dir, export_dir):
    for precision in ("fp32", "fp16", "int8"):
        choice = choose_precision(precisions_dir, precision, cpu_features=NO_INT8)
        assert (choice.precision, choice.kind) == (precision, "onnx") and choice.reason.startswith("asked for")
    assert "slower than fp32" in choose_precision(precisions_dir, "fp16").reason
    root, _, _ = export_dir
    with pytest.raises(CheckpointError, match=r"no int8 onnx artifacts .* --precision int8"):
        choose_precision(root / "out", "int8")
    with pytest.raises(EcmEdgeError, match="unknown precision"):
        choose_precision(root / "out", "bf16")


def test_int8_graphs_without_integer_convolutions_are_not_chosen(precisions_dir, tmp_path):
    """An int8 export of an older ecm-edge (Q/DQ that ONNX Runtime runs in float; its manifest records no
    integer convolutions) is no faster than fp32: auto keeps fp32 and says to re-export."""
    for path in precisions_dir.iterdir():
        if path.is_file():
            (tmp_path / path.name).write_bytes(path.read_bytes())
    for graph in ("", ".stream"):
        sidecar = tmp_path / f"ecm{graph}.int8.onnx.json"
        manifest = json.loads(sidecar.read_text())
        manifest.pop("quantization")
        sidecar.write_text(json.dumps(manifest))
    choice = choose_precision(tmp_path, cpu_features=VNNI)
    assert choice.precision == "fp32" and "re-export" in choice.reason


def test_localizer_says_which_precision_runs_and_why(precisions_dir, monkeypatch):
    monkeypatch.setattr("ecm_edge.runtime.engines.cpu_int8_instructions", lambda features=None: "AVX2")
    overrides = ("stream.stats_every_s=1e-9",)
    x = features(1, 12)[0]
    for precision, expected, reason in (("auto", "int8", "AVX2"), ("fp32", "fp32", "asked for")):
        localizer = Localizer.from_artifacts(precisions_dir, precision=precision, overrides=overrides)
        assert (localizer.engine, localizer.precision) == ("onnxruntime", expected)
        assert localizer.head.runner.offline.manifest.precision == expected
        stats = [e for e in localizer.push_features(x) if e["type"] == "stats"]
        localizer.close()
        assert stats[-1]["precision"] == expected and reason in stats[-1]["precision_reason"]
    with pytest.raises(ConfigError, match="needs an export folder"):
        Localizer.from_artifacts(precisions_dir.parent / "run", precision="int8")


def test_stream_cli_honours_precision(precisions_dir, tmp_path):
    from click.testing import CliRunner

    from ecm_edge.cli.stream import stream

    np.save(tmp_path / "features.npy", features(1, 12)[0])
    out = tmp_path / "events.jsonl"
    result = CliRunner().invoke(stream, ["--features", str(tmp_path / "features.npy"), "--artifacts",
                                         str(precisions_dir), "--precision", "fp16", "--no-realtime", "--out",
                                         str(out), "--set", "stream.stats_every_s=1e-9"])
    assert result.exit_code == 0, result.output
    stats = [json.loads(line) for line in out.read_text().splitlines() if '"stats"' in line]
    assert stats and {e["precision"] for e in stats} == {"fp16"}


def test_streaming_graphs_take_a_batch_of_windows(precisions_dir):
    """A many-streams engine batches one window per stream: the streaming graph's batch axis is dynamic."""
    x = features(8, 5, seed=5)
    for precision in ("fp32", "int8"):
        runner = load_engine(select_artifact(precisions_dir, "streaming", precision, kind="onnx"))
        assert runner.manifest.inputs[0].shape[0] == "batch"
        batched = runner.infer(x)["cas"]
        assert batched.shape == (8, 1, C)
        for i in (0, 7):
            np.testing.assert_allclose(batched[i], runner.infer(x[i:i + 1])["cas"][0], atol=1e-5)


def test_checks_lists_what_each_precision_runs_here(precisions_dir):
    from click.testing import CliRunner

    from ecm_edge.cli.checks import checks

    result = CliRunner().invoke(checks, ["--json", "--artifacts", str(precisions_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"cpu int8", "precision fp32", "precision fp16", "precision int8", "precision auto"} <= set(report)
    assert str(precisions_dir) in report["precision auto"]
    assert "slower than fp32" in report["precision fp16"]
    lines = precision_report(precisions_dir, cpu_features=NO_INT8)
    assert "no faster than fp32" in lines["int8"] and lines["auto"].startswith("fp32")
    lines = precision_report(cpu_features=VNNI)
    assert "QLinearConv" in lines["int8"] and lines["auto"].startswith("int8")


# -- GPU ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_torch_engine_on_device_buffers_shares_the_callers_stream(export_dir):
    """numba device arrays in and out, queued on a numba stream; the result equals the host path."""
    from numba import cuda

    if not cuda.is_available() or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU visible to numba and torch")
    root, model, _ = export_dir
    runner = load_engine(root / "run", graph="offline", device="cuda")
    x = features(2, 48)
    stream = cuda.stream()
    assert stream_handle(stream) != 0
    inputs = {"features": cuda.to_device(x, stream=stream)}
    outputs = {"cas": cuda.device_array((2, 48, C), np.float32, stream=stream),
               "video_scores": cuda.device_array((2, C), np.float32, stream=stream)}
    assert device_pointer(outputs["cas"]) != 0
    runner.infer_device(inputs, outputs, stream=stream)
    stream.synchronize()
    np.testing.assert_allclose(outputs["cas"].copy_to_host(), reference(model, x)["cas"], atol=1e-4)


@pytest.mark.gpu
def test_onnxruntime_cuda_provider_binds_device_buffers(export_dir):
    import onnxruntime as ort
    from numba import cuda

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not cuda.is_available():
        pytest.skip("needs onnxruntime-gpu (the CUDA provider) and a CUDA GPU")
    _, model, result = export_dir
    stream = cuda.stream()
    runner = load_engine(result.artifact("offline", "fp32"), providers="cuda", stream=stream)
    assert runner.supports_device_buffers
    x = features(1, 48)
    out = runner.infer_device({"features": cuda.to_device(x, stream=stream)}, stream=stream)
    np.testing.assert_allclose(out["cas"].copy_to_host(), reference(model, x)["cas"], atol=1e-4)


@pytest.mark.gpu
def test_stream_handles_of_numba_and_cuda_python_streams_agree():
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from cuda.bindings import driver

    cuda.current_context()  # the primary context numba uses
    err, raw = driver.cuStreamCreate(0)
    assert err == driver.CUresult.CUDA_SUCCESS
    try:
        handle = stream_handle(raw)
        assert handle == int(raw) != 0
        wrapped = cuda.external_stream(handle)
        assert stream_handle(wrapped) == handle
        array = cuda.to_device(np.arange(6, dtype=np.float32), stream=wrapped)
        wrapped.synchronize()
        assert array.copy_to_host().tolist() == list(range(6))
    finally:
        driver.cuStreamDestroy(raw)
