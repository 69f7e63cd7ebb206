"""The TensorRT path: version gating, profile shapes, engine manifests, and the message when TensorRT is absent.

The build itself needs TensorRT and a GPU; everything it decides beforehand is pure Python and tested here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ecm_edge.cli.main import main
from ecm_edge.config import ExportConfig, load_config
from ecm_edge.errors import CheckpointError, ConfigError, MissingDependencyError
from ecm_edge.export.pipeline import ExportRequest, run_export
from ecm_edge.export.tensorrt_build import (
    ProfileShape,
    engine_manifest,
    engine_path_for,
    import_tensorrt,
    plan_build,
    profile_shapes,
    tensorrt_missing_message,
)
from ecm_edge.manifest import RuntimeVersions, read_manifest, verify_artifact, write_manifest
from ecm_edge.runtime.engines import load_engine
from ecm_edge.train.deploy import save_deploy
from ecm_edge.train.model import ECM, ECMDims

TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(TENSORRT_INSTALLED, reason="TensorRT is installed here; these tests check "
                                                                  "the behaviour without it")




# -- version gating ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["10.0.1", "10.3.0.26", "10.13.2", "11.0.0", "11.2.1"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_default_build_is_strongly_typed_without_precision_flags(version, precision):
    plan = plan_build(version, precision)
    assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",)
    assert plan.builder_flags == () and not plan.uses_calibrator
    assert plan.cleared_flags == (("TF32",) if precision == "fp32" else ())


@pytest.mark.parametrize(("precision", "flags"), [("fp32", ()), ("fp16", ("FP16",)), ("int8", ("INT8",))])
def test_tensorrt_10_weakly_typed_path_uses_the_flag_of_the_precision_only(precision, flags):
    plan = plan_build("10.3.0", precision, strongly_typed=False)
    assert not plan.strongly_typed and plan.network_flags == ()
    assert plan.builder_flags == flags and not plan.uses_calibrator


@pytest.mark.parametrize("version", ["11.0.0", "11.1.0.5"])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_11_never_uses_the_removed_flags(version, precision):
    with pytest.raises(ConfigError, match="strongly typed networks only"):
        plan_build(version, precision, strongly_typed=False)


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "garbage"])
def test_tensorrt_older_than_10_is_refused(version):
    with pytest.raises(MissingDependencyError, match="TensorRT 10 or newer"):
        plan_build(version, "fp16")


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision"):
        plan_build("10.3.0", "int4")


# -- optimization profile ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "opt_t"), [("thumos14", 750), ("small", 256), ("activitynet13", 100)])
def test_offline_profile_comes_from_the_config(config, opt_t):
    cfg = load_config(config)
    profile = profile_shapes(cfg.export, "offline", cfg.data.feature_dim)
    d = cfg.data.feature_dim
    assert profile == {"features": ProfileShape((1, 1, d), (1, opt_t, d), (cfg.export.max_batch, 2048, d))}


def test_streaming_profile_is_the_window():
    export = ExportConfig(max_batch=4, stream_opt_batch=2, stream_opt_window=9, stream_max_window=32)
    assert profile_shapes(export, "streaming", 64) == {
        "features": ProfileShape((1, 5, 64), (2, 9, 64), (4, 32, 64))}


@pytest.mark.parametrize("overrides", [{"min_t": 800}, {"opt_t": 4096}, {"min_t": 0}, {"max_batch": 0}])
def test_inconsistent_profile_is_a_config_error(overrides):
    export = ExportConfig(**overrides)
    with pytest.raises(ConfigError):
        profile_shapes(export, "offline", 2048)


def test_streaming_window_below_the_receptive_field_is_a_config_error():
    with pytest.raises(ConfigError, match="stream_opt_window"):
        profile_shapes(ExportConfig(stream_opt_window=3), "streaming", 64)


@pytest.mark.parametrize(("onnx_name", "precision", "engine"), [
    ("ecm.onnx", "fp32", "ecm.fp32.engine"), ("ecm.fp16.onnx", "fp16", "ecm.fp16.engine"),
    ("ecm.stream.int8.onnx", "int8", "ecm.stream.int8.engine"), ("ecm.stream.onnx", "fp32", "ecm.stream.fp32.engine"),
])
def test_engine_names(onnx_name, precision, engine):
    assert engine_path_for(Path("out") / onnx_name, precision) == Path("out") / engine


# -- engine manifests -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    cfg = load_config("small", ["data.feature_dim=32", "model.hidden_dim=32", "model.num_classes=5"])
    torch.manual_seed(0)
    save_deploy(ECM(ECMDims.from_config(cfg)), [f"c{i}" for i in range(5)], cfg, root / "run")
    return root, run_export(ExportRequest(root / "run", root / "out", precision="fp16", engine=True))


def test_engine_manifest_records_tensorrt_gpu_and_profile(exported, tmp_path):
    _, result = exported
    onnx_manifest = read_manifest(result.artifact("offline", "fp16"))
    profile = profile_shapes(ExportConfig(), "offline", 32)
    manifest = engine_manifest(onnx_manifest, "10.3.0", "NVIDIA Orin", (8, 7), plan_build("10.3.0", "fp16"), profile)
    assert manifest.kind == "engine" and manifest.precision == "fp16" and manifest.graph == "offline"
    assert manifest.requires == {"tensorrt": "10.3.0", "compute_capability": "8.7"}
    assert manifest.gpu == {"name": "NVIDIA Orin", "compute_capability": "8.7"}
    assert manifest.outputs == onnx_manifest.outputs and manifest.class_names == onnx_manifest.class_names
    assert manifest.source["onnx_sha256"] == onnx_manifest.sha256
    assert manifest.source["profile"]["features"]["opt"] == [1, 750, 32]
    assert manifest.rebuild.endswith("--engine")
    stand_in = tmp_path / "ecm.fp16.engine"  # bytes that stand in for an engine: only the manifest logic runs
    stand_in.write_bytes(b"\x01" * 512)
    write_manifest(stand_in, manifest)
    verify_artifact(stand_in, runtime=RuntimeVersions(None, "10.3.0", "8.7"))
    with pytest.raises(CheckpointError, match=r"TensorRT 10\.3\.0"):
        verify_artifact(stand_in, runtime=RuntimeVersions(None, "11.0.0", "8.7"))


# -- TensorRT absent ---------------------------------------------------------------------------------------------
@needs_no_tensorrt
def test_import_tensorrt_says_what_to_install_and_what_works_instead():
    with pytest.raises(MissingDependencyError) as info:
        import_tensorrt()
    message = str(info.value)
    assert "TensorRT is needed" in message and "JetPack" in message and "onnxruntime" in message


@needs_no_tensorrt
def test_export_with_engine_but_without_tensorrt_writes_onnx_only_and_says_so(exported):
    root, result = exported
    assert not list((root / "out").glob("*.engine"))
    assert result.engine_message == tensorrt_missing_message([result.artifact("offline", "fp16"),
                                                              result.artifact("streaming", "fp16")])
    assert "ecm.fp16.onnx" in result.engine_message and "onnxruntime engine" in result.engine_message


@needs_no_tensorrt
def test_cli_engine_without_tensorrt_exits_0_with_the_message(exported, tmp_path, capsys, cli_logging):
    root, _ = exported
    with pytest.raises(SystemExit) as info:
        main(["export", "--checkpoint", str(root / "run"), "--precision", "fp32", "--engine", "-o", str(tmp_path),
              "--no-progress"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "TensorRT is not installed, so no engine was built" in out
    assert str(tmp_path / "ecm.onnx") in out and "onnxruntime engine" in out
    assert not list(tmp_path.glob("*.engine"))


@needs_no_tensorrt
def test_tensorrt_engine_refuses_a_stand_in_engine_without_tensorrt(exported, tmp_path):
    _, result = exported
    onnx_manifest = read_manifest(result.artifact("offline", "fp16"))
    manifest = engine_manifest(onnx_manifest, "10.3.0", "NVIDIA Orin", (8, 7), plan_build("10.3.0", "fp16"),
                               profile_shapes(ExportConfig(), "offline", 32))
    stand_in = tmp_path / "ecm.fp16.engine"
    stand_in.write_bytes(b"\x01" * 512)
    write_manifest(stand_in, manifest)
    with pytest.raises(CheckpointError, match="TensorRT is not installed here"):
        load_engine(stand_in)
