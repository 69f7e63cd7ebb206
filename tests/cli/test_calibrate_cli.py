"""``ecm-edge calibrate`` as a user runs it, the same step at the end of ``ecm-edge train``, and ``ecm-edge export``
carrying the operating points beside its artifacts."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the run these tests calibrate is trained with torch")

from train_helpers import make_dataset, single_thread, tiny_overrides

from ecm_edge import calibration
from ecm_edge.cli.main import main
from ecm_edge.operating_points import OPERATING_POINTS_NAME, read_operating_points

LOW_BAR = ["--set", "alerts.min_instances=2"]  # a few epochs on 18 videos: a weak model


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info, single_thread():
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("calib_cli") / "data")


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> Path:
    """A run trained by ``ecm-edge train``, which calibrates at its end."""
    project = tmp_path_factory.mktemp("runs")
    with pytest.raises(SystemExit) as exit_info, single_thread():
        main(["train", "--config", "small", "--data", str(data_dir), "--project", str(project), "--name", "run",
              "--no-progress", *tiny_overrides("train.epochs=8", "alerts.min_instances=2")])
    assert exit_info.value.code == 0
    return project / "train" / "run"


def test_train_ends_with_the_operating_points(trained):
    run = trained
    points = read_operating_points(run)
    assert points is not None and points.split == "val" and points.test is not None
    assert (run / OPERATING_POINTS_NAME).is_file()


def test_train_without_calibration(data_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--config", "small", "--data", str(data_dir), "--project", str(tmp_path),
                             "--name", "plain", "--no-progress", "--no-calibrate", *tiny_overrides("train.epochs=1"))
    assert code == 0, err
    assert not (tmp_path / "train" / "plain" / OPERATING_POINTS_NAME).exists()
    assert "operating points" not in out and "next: ecm-edge eval" in out


def test_calibrate_prints_a_table_and_writes_the_points(trained, data_dir, capsys):
    run = trained
    code, out, err = run_cli(capsys, "calibrate", "--checkpoint", str(run), "--data", str(data_dir),
                             "--precision", "0.3", "--tiou", "0.4", "--no-progress", *LOW_BAR)
    assert code == 0, err
    points = read_operating_points(run)
    assert (points.target_precision, points.tiou) == (0.3, 0.4)
    assert "operating points for precision 0.30 at tIoU 0.40, chosen on the val split" in out
    assert "| class | min score | held-out instances | point |" in out
    for label in points.classes:
        assert f"| {label} | {points.classes[label].min_score:.4f} |" in out
    assert "| all classes |" in out and f"written to {run / OPERATING_POINTS_NAME}" in out


def test_calibrate_picks_the_thresholds_of_hand_made_segments(trained, data_dir, capsys, monkeypatch):
    """Every instance found at score 0.8, and one false alarm at 0.9 in each video of its class: the precision is
    0 at 0.9 and n / (n + videos) at 0.8, so 0.8 is each class's point for a target of 0.5."""
    run = trained

    def found(engine, dataset, min_duration_s=0.0, advance=None):
        results = {}
        for video_id in dataset.video_ids:
            truth = dataset.annotations.videos[video_id]
            results[video_id] = [{"label": label, "score": 0.8, "segment": [float(s), float(e)]}
                                 for (s, e), label in zip(truth.segments, truth.labels, strict=True)]
            results[video_id] += [{"label": label, "score": 0.9, "segment": [0.0, 0.0]} for label in truth.classes]
        return results

    monkeypatch.setattr(calibration, "stream_segments", found)
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", str(run), "--data", str(data_dir),
                           "--precision", "0.5", "--set", "alerts.min_instances=1")
    assert code == 0, err
    points = read_operating_points(run)
    assert points.global_min_score == 0.8 and points.global_point.calibrated
    for point in points.classes.values():
        if point.instances:
            assert point.calibrated and point.min_score == 0.8 and point.recall == 1.0
        else:
            assert not point.calibrated and "0 held-out instance(s)" in point.note
    from ecm_edge.config import load_config
    from ecm_edge.data.dataset import VideoDataset

    test = VideoDataset.open(data_dir, load_config("small", ["data.feature_dim=32"]), "test")
    alarms = sum(len(test.annotations.videos[v].classes) for v in test.video_ids)  # the 0.9 ones alert too
    overall = points.test["overall"]
    assert overall["recall"] == 1.0 and overall["false_alerts"] == alarms
    assert overall["true_alerts"] == overall["instances"] == test.annotations.num_segments


def test_calibrate_errors_a_user_can_act_on(trained, data_dir, tmp_path, capsys):
    run = trained
    empty = tmp_path / "run"
    empty.mkdir()
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", str(empty), "--data", str(data_dir))
    assert code == 1 and "--redeploy" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", str(run), "--data", str(tmp_path / "nowhere"))
    assert code == 1 and "does not exist" in err
    code, _, err = run_cli(capsys, "calibrate", "--checkpoint", str(run), "--data", str(data_dir), "--precision", "2")
    assert code == 2


def test_export_carries_the_points_of_its_weights(trained, data_dir, tmp_path, caplog):
    pytest.importorskip("onnx")
    from ecm_edge.export.pipeline import ExportRequest, run_export
    from ecm_edge.manifest import verify_artifact
    from ecm_edge.runtime.localizer import Localizer

    run = trained
    result = run_export(ExportRequest(run, tmp_path / "export", precision="fp32", engine=False))
    copied = tmp_path / "export" / OPERATING_POINTS_NAME
    assert copied.read_bytes() == (run / OPERATING_POINTS_NAME).read_bytes()
    assert copied not in result.artifacts and all(verify_artifact(path) for path in result.artifacts)
    with Localizer.from_artifacts(tmp_path / "export", engine="onnxruntime") as localizer:
        assert localizer.engine == "onnxruntime"
    assert read_operating_points(tmp_path / "export") == read_operating_points(run)

    stale = shutil.copytree(run, tmp_path / "stale_run")
    raw = json.loads((stale / OPERATING_POINTS_NAME).read_text())
    raw["source"]["weights_sha256"] = "0" * 64
    (stale / OPERATING_POINTS_NAME).write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING, logger="ecm_edge"):
        run_export(ExportRequest(stale, tmp_path / "stale_export", precision="fp32", engine=False))
    assert not (tmp_path / "stale_export" / OPERATING_POINTS_NAME).exists()
    assert "calibrated for other weights" in caplog.text
