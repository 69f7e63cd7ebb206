"""The Triton model repository ``ecm-edge export --triton`` writes, checked without a server: the platform model's
config against the exported graph, the stream model's sequence batcher, and the stamp that refuses a repository
from another release or with changed files."""

from __future__ import annotations

import re
import shutil

import pytest
from stream_helpers import D
from triton_helpers import FOREIGN

from ecm_edge.errors import CheckpointError
from ecm_edge.serving import check_repository
from ecm_edge.triton_repository import CONFIG_NAME, ONNX_MODEL, STREAM_MODEL


def _pbtxt_tensors(text: str, section: str) -> dict[str, tuple[str, list[int]]]:
    block = re.search(rf"^{section} \[(.*?)^\]", text, re.S | re.M).group(1)
    return {m[0]: (m[1], [int(d) for d in m[2].split(",")])
            for m in re.findall(r'name: "(\w+)" data_type: (\w+) dims: \[ ([-\d, ]+) \]', block)}


def test_platform_config_matches_the_exported_graph(repository):
    """ecm_head_onnx's config.pbtxt: the streaming graph's inputs and outputs, batch axis left to Triton."""
    onnx = pytest.importorskip("onnx")
    repo = repository[1]
    text = (repo / ONNX_MODEL / CONFIG_NAME).read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" in text and "instance_group" in text
    graph = onnx.load(str(repo / ONNX_MODEL / "1" / "model.onnx")).graph

    def dims(value) -> list[int]:
        return [d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim][1:]

    assert _pbtxt_tensors(text, "input") == {v.name: ("TYPE_FP32", dims(v)) for v in graph.input}
    assert _pbtxt_tensors(text, "output") == {v.name: ("TYPE_FP32", dims(v)) for v in graph.output}
    stream = (repo / STREAM_MODEL / CONFIG_NAME).read_text()
    assert _pbtxt_tensors(stream, "input")["FEATURES"] == ("TYPE_FP32", [-1, D])
    assert "oldest" in stream and "max_sequence_idle_microseconds" in stream


def test_foreign_repository_is_refused_before_start(repository):
    with pytest.raises(CheckpointError, match=r"exported by ecm-edge 0\.0\.1"):
        check_repository(repository[1])
    check_repository_without_foreign = repository[1].parent / "clean"
    shutil.copytree(repository[1], check_repository_without_foreign)
    shutil.rmtree(check_repository_without_foreign / FOREIGN)
    assert {m.name for m in check_repository(check_repository_without_foreign)} == {STREAM_MODEL, ONNX_MODEL}
    (check_repository_without_foreign / STREAM_MODEL / "1" / "model.py").write_text("# changed\n")
    with pytest.raises(CheckpointError, match="changed since the export"):
        check_repository(check_repository_without_foreign)


def test_no_server_anywhere_says_what_to_install(monkeypatch):
    import importlib.util

    from ecm_edge import serving
    from ecm_edge.errors import MissingDependencyError

    monkeypatch.setattr(serving.shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"needed for ecm-edge serve .*pip install 'ecm-edge\[serve\]'"):
        serving.find_server()


def test_the_server_python_environment_can_hold_the_wheel(monkeypatch, tmp_path):
    """A NumPy 2 environment cannot hold nvidia-pytriton (it pins NumPy 1.x); the server's own Python can."""
    import importlib.util

    from ecm_edge import serving

    package = tmp_path / "site-packages" / "pytriton"
    (package / "tritonserver" / "bin").mkdir(parents=True)
    (package / "tritonserver" / "bin" / "tritonserver").write_bytes(b"")
    env = serving.PythonEnv(tmp_path / "bin" / "python", "3.11", "1.26.4", "0.0.0", pytriton=package)
    monkeypatch.setattr(serving.shutil, "which", lambda name: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    server = serving.find_server(env)
    assert server.path == package / "tritonserver" / "bin" / "tritonserver" and server.wheel == package
    with pytest.raises(serving.MissingDependencyError, match="Triton server"):
        serving.find_server(serving.PythonEnv(env.executable, "3.11", "1.26.4", "0.0.0"))
