"""ONNX export of the offline and streaming graphs: parity with torch, dynamic shapes, FP16, the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ecm_edge.cli.main import main
from ecm_edge.config import load_config
from ecm_edge.export.onnx_export import DEFAULT_OPSET, export_graph
from ecm_edge.export.pipeline import ExportRequest, artifact_name, run_export
from ecm_edge.manifest import graph_specs, read_manifest, verify_artifact
from ecm_edge.train.deploy import save_deploy
from ecm_edge.train.model import ECM, ECMDims

D, H, C, T_FIXED = 32, 48, 5, 64  # k = int(64 · 0.125) = 8
OVERRIDES = [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}", f"data.t_fixed={T_FIXED}"]


def small_model(seed: int = 0) -> tuple[ECM, object]:
    cfg = load_config("small", OVERRIDES)
    torch.manual_seed(seed)
    model = ECM(ECMDims.from_config(cfg))
    return model, cfg




@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random ECM, its deploy folder and an fp16 export (fp32 + fp16, both graphs, manifests)."""
    root = tmp_path_factory.mktemp("export")
    model, cfg = small_model()
    save_deploy(model, [f"class{i}" for i in range(C)], cfg, root / "run")
    steps = []
    result = run_export(ExportRequest(checkpoint=root / "run", out_dir=root / "out", precision="fp16",
                                      engine=False), on_step=steps.append)
    model.eval()
    return model, result, steps


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def features(batch: int, length: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((batch, length, D)), 0).astype(np.float32)


def torch_offline(model: ECM, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with torch.no_grad():
        cas, scores, weights = model.export_forward(torch.from_numpy(x), with_weights=True)
    return cas.numpy(), scores.numpy(), weights.numpy()


def test_export_writes_both_graphs_in_fp32_and_fp16_with_manifests(exported):
    _, result, steps = exported
    names = sorted(p.name for p in result.artifacts)
    assert names == ["ecm.fp16.onnx", "ecm.onnx", "ecm.stream.fp16.onnx", "ecm.stream.onnx"]
    for path in result.artifacts:
        manifest = verify_artifact(path)
        assert manifest.class_names == [f"class{i}" for i in range(C)]
        assert manifest.feature["dim"] == D
        assert manifest.opset == DEFAULT_OPSET
    assert [s.what for s in steps] == ["onnx offline fp32", "onnx streaming fp32", "onnx offline fp16",
                                       "onnx streaming fp16"]
    assert all(s.size_bytes and s.seconds >= 0 for s in steps)


@pytest.mark.parametrize("length", [1, 5, 750, 2000])
def test_offline_graph_matches_torch_for_dynamic_lengths(exported, length):
    model, result, _ = exported
    x = features(2, length)
    cas, scores, weights = session(result.artifact("offline", "fp32")).run(None, {"features": x})
    ref_cas, ref_scores, ref_weights = torch_offline(model, x)
    assert cas.shape == (2, length, C) and scores.shape == (2, C) and weights.shape == (2, length, C)
    np.testing.assert_allclose(cas, ref_cas, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5, rtol=1e-5)


def test_top_k_is_clipped_to_short_clips_and_fixed_for_long_ones(exported):
    """k = 8: a 5-snippet clip averages all 5; a long clip averages exactly its top 8."""
    _, result, _ = exported
    sess = session(result.artifact("offline", "fp32"))
    for length, k in ((5, 5), (40, 8)):
        x = features(1, length, seed=length)
        cas, scores, _ = sess.run(None, {"features": x})
        top = np.sort(cas[0], axis=0)[::-1][:k].mean(axis=0)
        expected = np.exp(top - top.max()) / np.exp(top - top.max()).sum()
        np.testing.assert_allclose(scores[0], expected, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_streaming_graph_equals_offline_graph_on_valid_columns(exported, precision):
    """Window [s, s + W) gives the CAS of snippets s+2 … s+W−3, equal to the offline graph's columns there."""
    _, result, _ = exported
    x = features(1, 40)
    (full,) = session(result.artifact("offline", precision)).run(["cas"], {"features": x})
    stream = session(result.artifact("streaming", precision))
    tolerance = 1e-5 if precision == "fp32" else 2e-3
    (full_weights,) = session(result.artifact("offline", precision)).run(["weights"], {"features": x})
    for start, width in ((0, 5), (7, 5), (3, 12), (0, 40), (35, 5)):
        cas, weights = stream.run(None, {"features": x[:, start:start + width]})
        assert cas.shape == weights.shape == (1, width - 4, C)
        np.testing.assert_allclose(cas[0], full[0, start + 2:start + width - 2], atol=tolerance)
        np.testing.assert_allclose(weights[0], full_weights[0, start + 2:start + width - 2], atol=tolerance)


def test_streaming_graph_differs_from_offline_at_the_clip_edges(exported):
    """The offline graph zero-pads at the edges, so its first two columns are not what a window gives."""
    _, result, _ = exported
    x = features(1, 20) + 1.0
    (full,) = session(result.artifact("offline", "fp32")).run(["cas"], {"features": x})
    (cas,) = session(result.artifact("streaming", "fp32")).run(["cas"], {"features": x})
    np.testing.assert_allclose(cas[0], full[0, 2:-2], atol=1e-5)
    assert np.abs(full[0, :2] - cas[0, :2]).max() > 1e-3


def test_graph_io_names_and_shapes_follow_the_contract(exported):
    _, result, _ = exported
    for graph in ("offline", "streaming"):
        for precision in ("fp32", "fp16"):
            model = onnx.load(str(result.artifact(graph, precision)))
            onnx.checker.check_model(model, full_check=True)
            inputs, outputs = graph_specs(graph, D, C)
            for value, spec in zip(list(model.graph.input) + list(model.graph.output), inputs + outputs, strict=True):
                dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
                assert value.name == spec.name and dims == spec.shape
                assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O also for fp16
            assert "Dropout" not in {n.op_type for n in model.graph.node}
            assert model.opset_import[0].version == DEFAULT_OPSET


def test_streaming_manifest_states_the_window_contract(exported):
    _, result, _ = exported
    manifest = read_manifest(result.artifact("streaming", "fp32"))
    assert manifest.streaming["min_window"] == 5
    assert manifest.streaming["output_columns"] == "window-4"
    assert "j+2" in manifest.streaming["column_index"]
    assert manifest.outputs[0].shape == ["batch", "window-4", C]


def test_fp16_graph_has_fp16_weights_and_stays_close(exported):
    model, result, _ = exported
    graph = onnx.load(str(result.artifact("offline", "fp16"))).graph
    float_inits = [i for i in graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_inits)
    x = features(1, T_FIXED)
    cas, scores, weights = session(result.artifact("offline", "fp16")).run(None, {"features": x})
    ref_cas, ref_scores, ref_weights = torch_offline(model, x)
    assert cas.dtype == weights.dtype == np.float32
    assert np.abs(cas - ref_cas).max() < 1e-2 * max(1.0, np.abs(ref_cas).max())
    assert np.abs(weights - ref_weights).max() < 1e-2  # W = sigmoid(·) ∈ (0, 1): the cas bound at scale 1
    assert np.abs(scores - ref_scores).max() < 1e-3


def test_export_keeps_the_models_training_mode(tmp_path):
    model, _ = small_model()
    model.train()
    export_graph(model, tmp_path / "m.onnx", "streaming")
    assert model.training


def test_artifact_names():
    assert artifact_name("ecm", "offline", "fp32") == "ecm.onnx"
    assert artifact_name("ecm", "offline", "int8") == "ecm.int8.onnx"
    assert artifact_name("ecm", "streaming", "fp16") == "ecm.stream.fp16.onnx"
    assert artifact_name("ecm", "offline", "fp16", "engine") == "ecm.fp16.engine"
    assert artifact_name("ecm", "streaming", "int8", "engine") == "ecm.stream.int8.engine"


def test_cli_export_prints_one_line_per_step_and_the_next_command(exported, tmp_path, capsys, cli_logging):
    run = exported[1].out_dir.parent / "run"
    with pytest.raises(SystemExit) as info:
        main(["export", "--checkpoint", str(run), "--precision", "fp32", "-o", str(tmp_path / "cli"),
              "--no-engine", "--no-progress"])
    assert info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    step_lines = [line for line in out if line.startswith("onnx ")]
    assert len(step_lines) == 2 and all(" MB " in line and line.endswith(" s") for line in step_lines)
    assert str(tmp_path / "cli" / "ecm.onnx") in step_lines[0]
    assert out[-1] == f"next: ecm-edge stream --artifacts {tmp_path / 'cli'} --camera 0"
    manifest = json.loads((tmp_path / "cli" / "ecm.onnx.json").read_text())
    assert manifest["rebuild"].startswith(f"ecm-edge export --checkpoint {run} --precision fp32")


def test_cli_export_of_a_missing_checkpoint_is_one_error_line(tmp_path, capsys, cli_logging):
    with pytest.raises(SystemExit) as info:
        main(["export", "--checkpoint", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no deploy weights")


def test_artifacts_of_other_weights_in_the_output_folder_are_named(exported):
    _, result, _ = exported
    from ecm_edge.export.pipeline import warn_about_foreign_artifacts

    ours = read_manifest(result.artifact("offline", "fp32")).source["weights_sha256"]
    assert warn_about_foreign_artifacts(result.out_dir, ours) == []
    assert sorted(warn_about_foreign_artifacts(result.out_dir, "0" * 64)) == sorted(p.name for p in result.artifacts)
