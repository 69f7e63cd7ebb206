"""``ecm-edge predict`` and ``eval --checkpoint`` with a trained tiny model, and the wrong inputs a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from train_helpers import FEATURE_DIM, make_dataset, single_thread, tiny_config  # noqa: E402

from ecm_edge.cli.main import main  # noqa: E402
from ecm_edge.data.dataset import VideoDataset  # noqa: E402
from ecm_edge.errors import CheckpointError, DataError  # noqa: E402
from ecm_edge.rawpred import detections_from_raw  # noqa: E402
from ecm_edge.train.inference import predict_dataset  # noqa: E402
from ecm_edge.train.trainer import train  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("predict") / "data")


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict_runs") / "run"
    with single_thread():
        train(tiny_config("train.epochs=2"), data_dir, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def feature_dir(data_dir, tmp_path_factory) -> Path:
    """The test videos' features as standalone ``<video>.npy`` files [T, D]."""
    folder = tmp_path_factory.mktemp("features")
    dataset = VideoDataset.open(data_dir, tiny_config(), "test")
    for vid in dataset.video_ids:
        np.save(folder / f"{vid}.npy", dataset.features(vid))
    return folder


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info, single_thread():
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *phrases: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def test_predict_writes_activitynet_results_and_raw_predictions(capsys, run_dir, feature_dir, tmp_path):
    out, raw_path = tmp_path / "pred.json", tmp_path / "raw.npz"
    code, stdout, err = run_cli(capsys, "predict", "--checkpoint", str(run_dir), "--features", str(feature_dir),
                                "-o", str(out), "--save-raw", str(raw_path), "--no-progress")
    assert code == 0, err
    assert f"written to {out}" in stdout and "next:" in stdout
    document = json.loads(out.read_text())
    assert document["version"] == "VERSION 1.3"
    ids = sorted(p.stem for p in feature_dir.glob("*.npy"))
    assert sorted(document["results"]) == ids
    for dets in document["results"].values():
        for det in dets:
            assert set(det) == {"label", "score", "segment"} and det["segment"][0] <= det["segment"][1]

    with np.load(raw_path, allow_pickle=False) as raw:
        for key in ("video_ids", "cas", "lengths", "video_scores", "num_frames", "fps", "duration", "class_names"):
            assert key in raw.files, key
        assert raw["cas"].shape == raw["weights"].shape == (len(ids), 4, 32)
        assert raw["video_scores"].shape == (len(ids), 4)
        assert raw["weights"].min() > 0 and raw["weights"].max() < 1  # sigmoid of the transition head
        np.testing.assert_allclose(raw["video_scores"].sum(axis=1), 1.0, rtol=1e-5)
        first = np.load(feature_dir / f"{ids[0]}.npy")
        assert raw["duration"][0] == pytest.approx(first.shape[0] * 0.64)

    from ecm_edge.rawpred import RawPredictions

    cfg = tiny_config()
    assert detections_from_raw(RawPredictions.load(raw_path), cfg) == document["results"]


def test_predict_one_file_from_a_training_state(capsys, run_dir, feature_dir, tmp_path):
    one = sorted(feature_dir.glob("*.npy"))[0]
    out = tmp_path / "one.json"
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(run_dir / "best.pt"), "--features", str(one),
                           "-o", str(out), "--no-progress")
    assert code == 0, err
    assert list(json.loads(out.read_text())["results"]) == [one.stem]


def test_predict_dataset_returns_results_ground_truth_and_config(run_dir, data_dir):
    with single_thread():
        results, truth, cfg = predict_dataset(run_dir, data_dir, "test", ["post.class_threshold=0.1"])
    test_ids = VideoDataset.open(data_dir, tiny_config(), "test").video_ids
    assert list(results) == list(test_ids) and list(truth.videos) == list(test_ids)
    assert cfg.post.class_threshold == 0.1 and cfg.data.feature_dim == FEATURE_DIM


def test_eval_checkpoint_prints_the_map_table(capsys, run_dir, data_dir):
    code, stdout, err = run_cli(capsys, "eval", "--checkpoint", str(run_dir), "--data", str(data_dir),
                                "--split", "test")
    assert code == 0, err
    assert "0.50" in stdout and "avg" in stdout


# ------------------------------------------------------------------------------------------- wrong inputs


def test_feature_dimension_mismatch(capsys, run_dir, tmp_path):
    np.save(tmp_path / "v.npy", np.ones((20, FEATURE_DIM // 2), dtype=np.float32))
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(run_dir), "--features", str(tmp_path / "v.npy"),
                           "-o", str(tmp_path / "p.json"))
    assert_one_line_error(code, err, "'v'", f"expects [T, {FEATURE_DIM}]")
    assert not (tmp_path / "p.json").exists()


def test_feature_dimension_mismatch_of_a_dataset(run_dir, tmp_path):
    other = make_dataset(tmp_path / "d16", feature_dim=FEATURE_DIM // 2)
    with pytest.raises(DataError, match=rf"checkpoint .* needs \[T, {FEATURE_DIM}\]"):
        predict_dataset(run_dir, other, "test")


def test_checkpoint_from_another_class_list(capsys, run_dir, tmp_path):
    other = make_dataset(tmp_path / "five", num_classes=5)
    with pytest.raises(CheckpointError, match="trained on 4 classes"):
        predict_dataset(run_dir, other, "test")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(run_dir), "--data", str(other))
    assert_one_line_error(code, err, "trained on 4 classes", "has 5")


def test_empty_data_dir(capsys, run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "train", "--config", "small", "--data", str(empty), "--project",
                           str(tmp_path / "runs"))
    assert_one_line_error(code, err, str(empty))
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(run_dir), "--features", str(empty),
                           "-o", str(tmp_path / "p.json"))
    assert_one_line_error(code, err, "no .npy feature files")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(run_dir), "--data", str(empty))
    assert_one_line_error(code, err, str(empty))


def test_corrupted_checkpoint(capsys, run_dir, feature_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "model.json", "last.pt"):
        data = (run_dir / name).read_bytes()
        (broken / name).write_bytes(data if name == "model.json" else data[: len(data) // 2])
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(broken), "--features", str(feature_dir),
                           "-o", str(tmp_path / "p.json"))
    assert_one_line_error(code, err, "model.safetensors", "corrupted")
    code, _, err = run_cli(capsys, "train", "--resume", str(broken))
    assert_one_line_error(code, err, "last.pt", "corrupted or truncated")


def test_redeploy_rebuilds_corrupted_deploy_weights_from_best_pt(run_dir, feature_dir, tmp_path, capsys):
    """A corrupted ``model.safetensors`` is refused; ``train --redeploy`` rewrites it from best.pt, and the run
    predicts exactly what it predicted before."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    code, _, _ = run_cli(capsys, "predict", "--checkpoint", str(run), "--features", str(feature_dir),
                         "-o", str(tmp_path / "before.json"))
    assert code == 0
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x7f\x7f\x7f\x7f")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", str(run), "--features", str(feature_dir),
                           "-o", str(tmp_path / "corrupt.json"))
    assert code == 1 and "does not match the sha256" in err and not (tmp_path / "corrupt.json").exists()

    code, _, err = run_cli(capsys, "train", "--redeploy", str(run))
    assert code == 0 and "deploy weights rebuilt" in err
    code, _, _ = run_cli(capsys, "predict", "--checkpoint", str(run), "--features", str(feature_dir),
                         "-o", str(tmp_path / "after.json"))
    assert code == 0
    assert json.loads((tmp_path / "after.json").read_text()) == json.loads((tmp_path / "before.json").read_text())
