"""The incremental head: streamed CAS == the full offline pass (1e-5), one column of work per snippet."""

from __future__ import annotations

import numpy as np
import pytest

from ecm_edge.errors import CheckpointError, DataError
from ecm_edge.runtime.head import (
    ColumnHead,
    EngineRunner,
    FullPassRunner,
    HeadWeights,
    WindowHead,
    full_cas,
    load_head_weights,
)

D, H, C = 24, 40, 6
TOL = 1e-5


@pytest.fixture(scope="module")
def weights() -> HeadWeights:
    return HeadWeights.random(D, H, C, seed=3)


@pytest.fixture(scope="module")
def torch_model(weights):
    """The training module with the same weights: the offline pass the stream must reproduce."""
    torch = pytest.importorskip("torch")
    from ecm_edge.train.model import ECM, ECMDims

    model = ECM(ECMDims(D, H, C, topk=4))
    state = {k: torch.from_numpy(v.copy()) for k, v in weights.state_dict().items()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("transition")})
    model.load_state_dict(state)
    return model.eval()


def torch_cas(model, features: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model.export_forward(torch.from_numpy(features)[None])[0][0].numpy()


@pytest.fixture(scope="module")
def onnx_runner(weights, torch_model, tmp_path_factory):
    """The exported offline + streaming graphs of the same weights, run by ONNX Runtime."""
    pytest.importorskip("onnx")
    from ecm_edge.config import load_config
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.runtime.engines import load_engine
    from ecm_edge.train.deploy import save_deploy

    cfg = load_config("small", [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}"])
    run_dir, out = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("export")
    save_deploy(torch_model, [f"class{i}" for i in range(C)], cfg, run_dir)
    run_export(ExportRequest(checkpoint=run_dir, out_dir=out, precision="fp32", engine=False))
    return EngineRunner(load_engine(out / "ecm.onnx", "onnxruntime"),
                        load_engine(out / "ecm.stream.onnx", "onnxruntime"))


HEADS = ["column", "window-numpy", "window-onnxruntime"]


def make_head(kind: str, weights: HeadWeights, request: pytest.FixtureRequest):
    if kind == "column":
        return ColumnHead(weights)
    if kind == "window-onnxruntime":
        runner = request.getfixturevalue("onnx_runner")
    else:
        runner = FullPassRunner(lambda f: full_cas(weights, f))
    return WindowHead(runner, weights.feature_dim, weights.num_classes)


def stream(head, features: np.ndarray, chunks: list[int]) -> np.ndarray:
    out, at = [], 0
    for size in chunks:
        out.append(head.push(features[at:at + size]))
        at += size
    assert at == len(features)
    out.append(head.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 6, 17, 64])
def test_streamed_cas_equals_offline_pass(kind, length, weights, torch_model, request):
    features = np.random.default_rng(length).normal(size=(length, D)).astype(np.float32)
    expected = torch_cas(torch_model, features)
    streamed = stream(make_head(kind, weights, request), features, [1] * length)
    assert streamed.shape == (length, C)
    np.testing.assert_allclose(streamed, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", HEADS)
def test_any_chunking_gives_the_same_cas(kind, weights, request):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, D)).astype(np.float32)
    expected = full_cas(weights, features)
    chunks = [3, 1, 7, 2, 11, 1, 1, 24]
    head = make_head(kind, weights, request)
    np.testing.assert_allclose(stream(head, features, chunks), expected, atol=TOL, rtol=0)


def test_cas_is_final_two_snippets_later(weights):
    head = ColumnHead(weights)
    features = np.random.default_rng(1).normal(size=(8, D)).astype(np.float32)
    counts = [len(head.push(row)) for row in features]
    assert counts == [0, 0, 1, 1, 1, 1, 1, 1]
    assert len(head.flush()) == 2


def test_one_column_of_work_per_snippet(weights, monkeypatch):
    """Each new snippet evaluates one window per layer, whatever the history length."""
    head = ColumnHead(weights)
    rows: dict[str, list[int]] = {"hidden_of_windows": [], "cas_of_windows": []}
    mats = head._batched._mats
    for name in rows:
        original = getattr(mats, name)

        def counting(columns, original=original, name=name):
            out = original(columns)
            rows[name].append(len(out))
            return out

        monkeypatch.setattr(mats, name, counting)
    for row in np.random.default_rng(2).normal(size=(200, D)).astype(np.float32):
        head.push(row)
    assert set(rows["hidden_of_windows"][1:]) == {1} and set(rows["cas_of_windows"][2:]) == {1}


def test_flush_starts_a_new_stream(weights):
    head = ColumnHead(weights)
    rng = np.random.default_rng(4)
    first, second = rng.normal(size=(9, D)).astype(np.float32), rng.normal(size=(5, D)).astype(np.float32)
    stream(head, first, [9])
    np.testing.assert_allclose(stream(head, second, [5]), full_cas(weights, second), atol=TOL, rtol=0)


def test_deploy_folder_weights_match_torch(tmp_path, torch_model):
    from ecm_edge.config import load_config
    from ecm_edge.train.deploy import save_deploy

    cfg = load_config("small", [f"data.feature_dim={D}", f"model.hidden_dim={H}", f"model.num_classes={C}"])
    save_deploy(torch_model, [f"class{i}" for i in range(C)], cfg, tmp_path)
    loaded, meta = load_head_weights(tmp_path)
    features = np.random.default_rng(5).normal(size=(30, D)).astype(np.float32)
    np.testing.assert_allclose(stream(ColumnHead(loaded), features, [30]), torch_cas(torch_model, features),
                               atol=TOL, rtol=0)
    assert meta["class_names"][0] == "class0"


def test_missing_or_broken_weights_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_head_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "model.json").write_text('{"format": "ecm-edge/model", "class_names": ["a"], "dims": {"num_classes": 1}}')
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_head_weights(tmp_path)


def test_inconsistent_state_is_refused(weights):
    state = weights.state_dict()
    state["conv2.weight"] = state["conv2.weight"][:, :-1]
    with pytest.raises(CheckpointError, match="inconsistent head shapes"):
        HeadWeights.from_state(state)
    del state["conv1.bias"]
    with pytest.raises(CheckpointError, match=r"lacks conv1\.bias"):
        HeadWeights.from_state(state)


def test_wrong_feature_dim_names_the_expected_shape(weights):
    with pytest.raises(DataError, match=rf"\[N, {D}\]"):
        ColumnHead(weights).push(np.zeros((3, D + 1), np.float32))
    with pytest.raises(DataError, match="NaN"):
        ColumnHead(weights).push(np.full((1, D), np.nan, np.float32))


def test_a_foreign_model_description_is_refused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "model.json").write_text('{"class_names": []}')
    with pytest.raises(CheckpointError, match="not an ecm-edge model description"):
        load_head_weights(tmp_path)


# -- the three executors of the pre-stream held to each other: torch, ONNX Runtime, numpy ------------------------
@pytest.fixture(scope="module")
def full_weights(torch_model) -> HeadWeights:
    """The torch model's weights, the transition included, as the numpy head reads them."""
    return HeadWeights.from_state({k: v.detach().numpy() for k, v in torch_model.state_dict().items()})


@pytest.mark.parametrize("length", [1, 2, 5, 30])
def test_torch_onnx_and_numpy_give_the_same_cas_and_weights(length, torch_model, full_weights, onnx_runner):
    """The offline pass of every executor: CAS and transition weights equal to 1e-5, short clips included."""
    import torch

    features = np.random.default_rng(100 + length).normal(size=(length, D)).astype(np.float32)
    with torch.inference_mode():
        cas_t, _, weights_t = (o[0].numpy() for o in torch_model.export_forward(torch.from_numpy(features)[None],
                                                                                 with_weights=True))
    cas_np = full_cas(full_weights, features)
    cas_ort = onnx_runner.full_cas(features)
    for cas, weights in ((cas_np, full_weights.transition(cas_np)), (cas_ort, onnx_runner.last_weights)):
        np.testing.assert_allclose(cas, cas_t, atol=TOL, rtol=0)
        np.testing.assert_allclose(weights, weights_t, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["column", "window-onnxruntime"])
def test_streamed_transition_weights_equal_the_offline_ones(kind, torch_model, full_weights, request):
    """``last_transition_weights`` after every push / flush, concatenated, is the offline pass's W."""
    import torch

    features = np.random.default_rng(7).normal(size=(23, D)).astype(np.float32)
    with torch.inference_mode():
        expected = torch_model.export_forward(torch.from_numpy(features)[None], with_weights=True)[2][0].numpy()
    head = make_head(kind, full_weights, request)
    at, parts = 0, []
    for size in (1, 4, 2, 9, 7):
        head.push(features[at:at + size])
        parts.append(head.last_transition_weights())
        at += size
    head.flush()
    parts.append(head.last_transition_weights())
    np.testing.assert_allclose(np.concatenate(parts), expected, atol=TOL, rtol=0)


def test_a_head_without_transition_tensors_has_no_weights(weights):
    head = ColumnHead(weights)
    head.push(np.zeros((6, D), np.float32))
    assert head.last_transition_weights() is None
