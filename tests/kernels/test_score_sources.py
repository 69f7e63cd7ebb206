"""post.score_source: the CAS, the transition weights W, or both fused, through all post-processing kernels.

The selection happens once, before the kernels (``ecm_edge.kernels.score_rows``), so each must give the
numpy reference's detections on the rows the test computes by hand; a model exported before the ``weights``
output existed still loads and runs with ``cas``, and says to re-export when ``weights`` or ``fused`` is asked.
"""

from __future__ import annotations

import numpy as np
import pytest

from ecm_edge.config import load_config
from ecm_edge.errors import EcmEdgeError
from ecm_edge.kernels import PostParams, compare_detections
from ecm_edge.kernels.inputs import prepare_batch
from ecm_edge.kernels.reference import localize_reference
from ecm_edge.kernels.score_rows import SCORE_SOURCES, fuse_rows, normalize_rows, score_rows
from ecm_edge.postprocess import available_kernels, localize_batch

PARAMS = PostParams(mode="ecm", class_threshold=0.0)
N, C, T_MAX = 3, 4, 40
LENGTHS = np.array([40, 23, 31])
FRAMES = LENGTHS + 7  # a little interpolation; few frames keep the CUDA simulator fast


pytestmark = pytest.mark.usefixtures("fast_cuda_simulator")


def batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Zero-padded CAS and W = sigmoid(a · CAS + noise) whose peaks differ from the CAS's."""
    rng = np.random.default_rng(seed)
    t = np.arange(T_MAX)
    cas = np.zeros((N, C, T_MAX), np.float32)
    weights = np.zeros_like(cas)
    for v, length in enumerate(LENGTHS):
        bumps = np.sin(t[:length] / (2.0 + rng.random((C, 1)) * 3)) * 2 + rng.normal(0, 0.6, (C, length))
        cas[v, :, :length] = bumps
        logits = 1.5 * bumps[:, ::-1] + rng.normal(0, 1.0, (C, length))
        weights[v, :, :length] = 1.0 / (1.0 + np.exp(-logits))
    scores = rng.dirichlet(np.ones(C), N).astype(np.float32)
    return {"cas": cas, "weights": weights, "scores": scores}


def rows_by_hand(data: dict[str, np.ndarray], source: str) -> np.ndarray:
    """The rows a source should give, computed apart from ``score_rows``: per video, step-1 of §5 written out."""
    if source == "cas":
        return data["cas"]
    if source == "weights":
        return data["weights"]
    out = np.zeros_like(data["cas"])
    for v, length in enumerate(LENGTHS):
        parts = []
        for rows in (data["cas"][v, :, :length], data["weights"][v, :, :length]):
            rows = rows.astype(np.float64)
            low, high = np.maximum(rows.min(1), 0), np.maximum(rows.max(1), 0)
            parts.append((rows - low[:, None]) / np.where(high - low > 0, high - low, 1.0)[:, None])
        out[v, :, :length] = (parts[0] + parts[1]) / 2
    return out


def reference_detections(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    prepared = prepare_batch(rows, scores, num_frames=FRAMES, fps=25.0, lengths=LENGTHS, params=PARAMS)
    return localize_reference(prepared, PARAMS)


def test_fused_rows_by_hand():
    cas = np.array([[-1.0, 0.0, 2.0, 4.0]])
    weights = np.array([[0.2, 0.6, 0.4, 0.2]])
    # CAS: relu(min) = 0, max 4 → [-0.25, 0, 0.5, 1]; W: min 0.2, max 0.6 → [0, 1, 0.5, 0]
    np.testing.assert_allclose(fuse_rows(cas, weights), [[-0.125, 0.5, 0.5, 0.5]])
    fused = score_rows(cas[None].astype(np.float32), weights[None].astype(np.float32), "fused")
    np.testing.assert_allclose(fused[0], [[-0.125, 0.5, 0.5, 0.5]])
    # the kernels' own step 1 then stretches it: relu(min) = 0, max 0.5 → [-0.25, 1, 1, 1] (not the identity)
    np.testing.assert_allclose(normalize_rows(fused[0]), [[-0.25, 1.0, 1.0, 1.0]])


def test_kernel_normalization_is_the_identity_on_normalized_weights():
    w = batch()["weights"][0]
    once = normalize_rows(w)
    assert once.min() == pytest.approx(0.0) and once.max() == pytest.approx(1.0)
    np.testing.assert_allclose(normalize_rows(once), once, atol=1e-12)


def test_padding_stays_out_of_the_fused_normalization():
    data = batch()
    fused = score_rows(data["cas"], data["weights"], "fused", lengths=LENGTHS)
    assert not fused[1, :, LENGTHS[1]:].any()
    np.testing.assert_allclose(fused[1, :, :LENGTHS[1]],
                               fuse_rows(data["cas"][1, :, :LENGTHS[1]], data["weights"][1, :, :LENGTHS[1]]),
                               atol=1e-6)


@pytest.mark.parametrize("kernels", ["numpy", "cpu", "cuda"])
@pytest.mark.parametrize("source", SCORE_SOURCES)
def test_all_kernels_give_the_reference_detections_for_every_source(kernels, source):
    if kernels not in available_kernels():
        pytest.skip(f"kernels {kernels!r} unavailable here (cuda needs a GPU or NUMBA_ENABLE_CUDASIM=1)")
    data = batch()
    expected = reference_detections(rows_by_hand(data, source), data["scores"])
    found = localize_batch(data["cas"], data["scores"], weights=data["weights"], score_source=source,
                           lengths=LENGTHS, num_frames=FRAMES, fps=25.0, params=PARAMS, kernels=kernels)
    assert len(expected) > 0
    assert compare_detections(found, expected) is None, compare_detections(found, expected)


def test_the_sources_give_different_detections():
    data = batch()
    dets = {s: reference_detections(rows_by_hand(data, s), data["scores"]) for s in SCORE_SOURCES}
    assert compare_detections(dets["weights"], dets["cas"]) is not None
    assert compare_detections(dets["fused"], dets["cas"]) is not None


@pytest.mark.parametrize("source", ["weights", "fused"])
def test_asking_weights_of_outputs_without_them_says_to_re_export(source):
    data = batch()
    with pytest.raises(EcmEdgeError, match="re-export") as error:
        localize_batch(data["cas"], data["scores"], score_source=source, lengths=LENGTHS, num_frames=FRAMES,
                       fps=25.0, params=PARAMS, kernels="numpy", source_name="old.npz")
    assert f"post.score_source={source}" in str(error.value) and "old.npz" in str(error.value)


def test_config_key_and_choices():
    assert load_config("thumos14").post.score_source == "cas"
    assert load_config("small", ["post.score_source=fused"]).post.score_source == "fused"
    with pytest.raises(EcmEdgeError):
        load_config("small", ["post.score_source=attention"])


# -- exported models: new graphs stream the weights, old graphs still load --------------------------------------
D, H = 16, 24


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A random ECM's deploy folder, its export, and the same export as it was before ``weights`` existed."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from ecm_edge.export.onnx_export import export_graph
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.manifest import graph_specs, read_manifest, write_manifest
    from ecm_edge.train.deploy import save_deploy
    from ecm_edge.train.model import ECM, ECMDims

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(3)
    model = ECM(ECMDims(D, H, C, topk=8)).eval()
    with torch.no_grad():
        model.transition.weight.mul_(4.0)  # make W differ visibly from a monotone map of each CAS row
    cfg = load_config("small", [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}"])
    save_deploy(model, [f"a{i}" for i in range(C)], cfg, root / "run")
    run_export(ExportRequest(checkpoint=root / "run", out_dir=root / "new", precision="fp32", engine=False))
    run_export(ExportRequest(checkpoint=root / "run", out_dir=root / "old", precision="fp32", engine=False))
    for name, graph in (("ecm.onnx", "offline"), ("ecm.stream.onnx", "streaming")):
        path = root / "old" / name
        manifest = read_manifest(path)
        export_graph(model, path, graph, legacy=True)
        manifest.outputs = graph_specs(graph, D, C, legacy=True)[1]
        write_manifest(path, manifest)
    return root


def stream_events(folder, engine: str, source: str, features: np.ndarray) -> list[dict]:
    from ecm_edge.runtime.localizer import Localizer

    overrides = ("post.class_threshold=0.0", "stream.horizon=64", f"post.score_source={source}")
    with Localizer.from_artifacts(folder, engine, overrides=overrides) as localizer:
        events = []
        for at in range(0, len(features), 7):
            events += localizer.push_features(features[at:at + 7])
        events += localizer.flush()
    return [{k: v for k, v in e.items() if k not in ("emitted_at", "latency")} for e in events
            if e["type"] == "segment"]


@pytest.fixture(scope="module")
def stream_features() -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, D)).astype(np.float32)
    x[30:50] += 2.0 * rng.normal(size=D).astype(np.float32)
    return x


@pytest.mark.parametrize("source", ["weights", "fused"])
def test_stream_sources_agree_between_numpy_and_the_exported_graphs(exports, stream_features, source):
    numpy_events = stream_events(exports / "run", "numpy", source, stream_features)
    onnx_events = stream_events(exports / "new", "onnxruntime", source, stream_features)
    cas_events = stream_events(exports / "run", "numpy", "cas", stream_features)
    assert numpy_events and numpy_events != cas_events
    assert len(onnx_events) == len(numpy_events)
    for a, b in zip(onnx_events, numpy_events, strict=True):
        assert (a["class"], a["start"], a["end"]) == (b["class"], b["start"], b["end"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_an_old_export_loads_runs_cas_and_refuses_weights(exports, stream_features):
    from ecm_edge.runtime.engines import load_engine

    with load_engine(exports / "old" / "ecm.onnx") as runner:
        assert set(runner.infer(stream_features[None])) == {"cas", "video_scores"}
    old = stream_events(exports / "old", "onnxruntime", "cas", stream_features)
    new = stream_events(exports / "new", "onnxruntime", "cas", stream_features)
    assert len(old) == len(new) > 0
    for before, after in zip(old, new, strict=True):
        assert before.keys() == after.keys()
        assert {k: v for k, v in before.items() if k != "score"} == {k: v for k, v in after.items() if k != "score"}
        assert before["score"] == pytest.approx(after["score"])
    for source in ("weights", "fused"):
        with pytest.raises(EcmEdgeError, match="re-export the model with this version"):
            stream_events(exports / "old", "onnxruntime", source, stream_features)
