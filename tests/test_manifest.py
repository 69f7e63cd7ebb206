"""Artifact manifests: written beside every artifact, and a changed file or a mismatched runtime is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecm_edge.errors import CheckpointError
from ecm_edge.manifest import (
    MANIFEST_VERSION,
    Manifest,
    RuntimeVersions,
    TensorSpec,
    graph_specs,
    manifest_path,
    read_manifest,
    resolve_dim,
    sha256_file,
    verify_artifact,
    version_tuple,
    write_manifest,
)

REBUILD = "ecm-edge export --checkpoint runs/train/exp --precision fp16 -o out"


def make_manifest(kind: str = "onnx", precision: str = "fp16", graph: str = "offline", **extra) -> Manifest:
    inputs, outputs = graph_specs(graph, 32, 5)
    return Manifest(artifact="", kind=kind, graph=graph, precision=precision, inputs=inputs, outputs=outputs,
                    class_names=[f"class{i}" for i in range(5)], feature={"dim": 32, "fps": 25.0},
                    versions={"onnxruntime": "1.20.0"}, rebuild=REBUILD, **extra)


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "ecm.fp16.onnx"
    path.write_bytes(bytes(range(256)) * 64)
    write_manifest(path, make_manifest(requires={"onnxruntime": "1.13"}))
    return path


def flip_one_byte(path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_sidecar_holds_hash_size_and_contract(artifact):
    sidecar = manifest_path(artifact)
    assert sidecar.name == "ecm.fp16.onnx.json"
    raw = json.loads(sidecar.read_text())
    assert raw["sha256"] == sha256_file(artifact)
    assert raw["size_bytes"] == artifact.stat().st_size
    assert raw["artifact"] == "ecm.fp16.onnx"
    assert raw["format_version"] == MANIFEST_VERSION
    assert [o["name"] for o in raw["outputs"]] == ["cas", "video_scores", "weights"]
    assert raw["outputs"][0]["shape"] == ["batch", "time", 5]
    manifest = read_manifest(artifact)
    assert manifest.inputs == [TensorSpec("features", "float32", ["batch", "time", 32])]


def test_verify_accepts_an_untouched_artifact(artifact):
    manifest = verify_artifact(artifact, precision="fp16", kind="onnx", graph="offline",
                               runtime=RuntimeVersions("1.20.0", None, None))
    assert manifest.class_names[0] == "class0"


def test_one_flipped_byte_is_refused_with_the_rebuild_command(artifact):
    flip_one_byte(artifact)
    with pytest.raises(CheckpointError, match="does not match its manifest") as info:
        verify_artifact(artifact, runtime=RuntimeVersions("1.20.0", None, None))
    assert REBUILD in str(info.value)


def test_missing_manifest_is_refused(artifact):
    manifest_path(artifact).unlink()
    with pytest.raises(CheckpointError, match="no manifest"):
        verify_artifact(artifact)


def test_renamed_artifact_is_refused(artifact):
    renamed = artifact.with_name("other.onnx")
    artifact.rename(renamed)
    manifest_path(artifact).rename(manifest_path(renamed))
    with pytest.raises(CheckpointError, match="renamed"):
        verify_artifact(renamed)


def test_wrong_precision_kind_or_graph_is_refused(artifact):
    runtime = RuntimeVersions("1.20.0", None, None)
    with pytest.raises(CheckpointError, match="int8 was asked for"):
        verify_artifact(artifact, precision="int8", runtime=runtime)
    with pytest.raises(CheckpointError, match="engine was asked for"):
        verify_artifact(artifact, kind="engine", runtime=runtime)
    with pytest.raises(CheckpointError, match="streaming was asked for"):
        verify_artifact(artifact, graph="streaming", runtime=runtime)


def test_onnx_needing_a_newer_onnxruntime_is_refused(artifact):
    with pytest.raises(CheckpointError, match=r"needs onnxruntime ≥ 1.13 but 1.12.1 is installed"):
        verify_artifact(artifact, runtime=RuntimeVersions("1.12.1", None, None))


def test_newer_manifest_version_is_refused(artifact):
    sidecar = manifest_path(artifact)
    raw = json.loads(sidecar.read_text())
    raw["format_version"] = MANIFEST_VERSION + 1
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="upgrade ecm-edge"):
        verify_artifact(artifact)


@pytest.fixture
def engine_file(tmp_path):
    """A stand-in file to exercise the engine manifest checks (it is never deserialized)."""
    path = tmp_path / "ecm.fp16.engine"
    path.write_bytes(b"\x00" * 4096)
    write_manifest(path, make_manifest(kind="engine", requires={"tensorrt": "10.3.0", "compute_capability": "8.7"},
                                       gpu={"name": "Orin", "compute_capability": "8.7"}))
    return path


def test_engine_from_the_same_tensorrt_and_gpu_passes(engine_file):
    manifest = verify_artifact(engine_file, runtime=RuntimeVersions(None, "10.3.0", "8.7"))
    assert manifest.gpu["name"] == "Orin"


@pytest.mark.parametrize(("runtime", "message"), [
    (RuntimeVersions(None, "10.4.0", "8.7"), "built by TensorRT 10.3.0 but TensorRT 10.4.0 is installed"),
    (RuntimeVersions(None, "11.0.0", "8.7"), "only load in the version that built them"),
    (RuntimeVersions(None, "10.3.0", "9.0"), "compute capability 8.7"),
    (RuntimeVersions(None, None, "8.7"), "TensorRT is not installed"),
])
def test_engine_version_or_gpu_mismatch_is_refused(engine_file, runtime, message):
    with pytest.raises(CheckpointError, match=message) as info:
        verify_artifact(engine_file, runtime=runtime)
    assert "rebuild" in str(info.value) or "onnxruntime" in str(info.value)


def test_tampered_engine_is_refused_before_any_version_check(engine_file):
    flip_one_byte(engine_file, 10)
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        verify_artifact(engine_file, runtime=RuntimeVersions(None, "10.3.0", "8.7"))


def test_unknown_precision_in_manifest_is_refused(artifact):
    sidecar = manifest_path(artifact)
    raw = json.loads(sidecar.read_text())
    raw["precision"] = "int4"
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="precision must be one of"):
        read_manifest(artifact)


@pytest.mark.parametrize(("dim", "expected"), [(7, 7), ("time", 40), ("window-4", 5), ("window+1", 10)])
def test_symbolic_dimensions_resolve(dim, expected):
    assert resolve_dim(dim, {"time": 40, "window": 9}) == expected


def test_streaming_output_shape_is_window_minus_four():
    _, outputs = graph_specs("streaming", 32, 5)
    assert outputs[0].resolve({"batch": 2, "window": 9}) == (2, 5, 5)


def test_unbound_dimension_is_an_error():
    with pytest.raises(CheckpointError, match="not given"):
        resolve_dim("time", {"window": 3})


@pytest.mark.parametrize(("text", "expected"), [("10.3.0.26", (10, 3, 0, 26)), ("2.13.0+cpu", (2, 13, 0)),
                                                ("1.0rc1", (1, 0)), ("11", (11,))])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_manifest_module_imports_without_torch():
    code = ("import sys, ecm_edge.manifest; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_streaming_contract_follows_the_architecture():
    """The manifests publish the receptive radius the executors use, derived in ecm_edge.architecture."""
    from ecm_edge import architecture as arch
    from ecm_edge.manifest import STREAM_MIN_WINDOW, STREAMING_CONTRACT

    assert arch.RECEPTIVE_RADIUS == arch.TEMPORAL_CONVS * (arch.KERNEL_SIZE // 2) == 2
    assert STREAMING_CONTRACT["receptive_radius"] == arch.RECEPTIVE_RADIUS
    assert STREAMING_CONTRACT["min_window"] == STREAM_MIN_WINDOW == arch.STREAM_WINDOW == 5
    assert STREAMING_CONTRACT["output_columns"] == f"window-{2 * arch.RECEPTIVE_RADIUS}"


def test_architecture_module_imports_without_torch_or_numpy():
    code = ("import sys, ecm_edge.architecture; "
            "assert not {'torch', 'numpy', 'onnx'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
