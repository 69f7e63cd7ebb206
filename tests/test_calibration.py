"""Operating points (``ecm_edge.calibration``, ``ecm_edge.operating_points``): the threshold rule on segments whose
right answer is computed by hand, the fallback to the global point, the sidecar file, and the whole step on a tiny
trained run (its held-out videos streamed through the engine)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from ecm_edge.calibration import (
    alert_report,
    calibrate_run,
    choose_points,
    pick_threshold,
    split_videos,
    stream_segments,
)
from ecm_edge.config import config_from_stored
from ecm_edge.data.annotations import Annotations, VideoAnnotation
from ecm_edge.data.dataset import VideoDataset
from ecm_edge.errors import CheckpointError, DataError
from ecm_edge.evaluation import match_detections
from ecm_edge.operating_points import (
    OPERATING_POINTS_NAME,
    ClassPoint,
    OperatingPoints,
    read_operating_points,
    write_operating_points,
)

TARGET, MIN_INSTANCES = 0.75, 5

# ------------------------------------------------------------------------------------------ hand-made segments


def test_the_lowest_threshold_reaching_the_target_wins():
    # precision at each score: 0.9 → 1/1, 0.8 → 2/2, 0.7 → 2/3, 0.6 → 3/4 (reaches 0.75), 0.5 → 3/5
    pick = pick_threshold(np.array([0.5, 0.9, 0.7, 0.6, 0.8]), np.array([0, 1, 0, 1, 1], bool), 4, TARGET)
    assert pick.reached and pick.min_score == 0.6
    assert pick.precision == pytest.approx(0.75) and pick.recall == pytest.approx(0.75)


def test_a_threshold_keeps_every_segment_of_its_score():
    # 0.7 would keep both 0.7 segments (2/3 < 0.8), so 0.9 is the lowest threshold reaching 0.8
    pick = pick_threshold(np.array([0.9, 0.7, 0.7]), np.array([1, 1, 0], bool), 2, 0.8)
    assert pick.min_score == 0.9 and pick.precision == 1.0 and pick.recall == 0.5


def test_an_unreachable_target_gives_the_most_precise_threshold_and_says_so():
    pick = pick_threshold(np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0], bool), 3, 0.9)
    assert not pick.reached and pick.min_score == 0.8 and pick.best_precision == 0.5
    nothing_matched = pick_threshold(np.array([0.9, 0.8]), np.array([0, 0], bool), 1, 0.5)
    assert not nothing_matched.reached and nothing_matched.min_score == 0.9  # the fewest false alerts
    assert pick_threshold(np.zeros(0), np.zeros(0, bool), 3, 0.5).min_score is None


def _video(video_id: str, instances: list[tuple[str, float, float]]) -> VideoAnnotation:
    segments = np.array([[s, e] for _, s, e in instances], np.float64).reshape(-1, 2)
    return VideoAnnotation(video_id, "train", segments, [label for label, _, _ in instances])


# Dive: 6 instances; Jump: 2 (< MIN_INSTANCES); Run: none; Swim: 5, but its precision never reaches the target.
GROUND_TRUTH = Annotations({
    "v1": _video("v1", [("Dive", 10.0 * k, 10.0 * k + 5) for k in range(6)]),
    "v2": _video("v2", [("Jump", 0, 4), ("Jump", 10, 14)] + [("Swim", 40.0 + 10 * k, 42.0 + 10 * k) for k in range(5)]),
}, ["Dive", "Jump", "Run", "Swim"])
DETECTIONS = {
    "v1": [{"label": "Dive", "score": s, "segment": seg} for s, seg in
           [(0.9, [0, 5]), (0.8, [10, 15]), (0.7, [60, 65]), (0.65, [20, 25]),
            (0.5, [0.5, 5]),  # the first instance again: each instance matches once, so a false alarm
            (0.4, [30, 35])]],
    "v2": [{"label": "Jump", "score": 0.95, "segment": [0, 4]}, {"label": "Jump", "score": 0.55, "segment": [10, 14]},
           {"label": "Run", "score": 0.45, "segment": [20, 30]},  # no Run instance anywhere: a false alarm
           {"label": "Swim", "score": 0.25, "segment": [100, 110]}, {"label": "Swim", "score": 0.2, "segment": [40, 42]}],
}


@pytest.fixture
def matches():
    return match_detections(DETECTIONS, GROUND_TRUTH, 0.5, keep_unscored=True)


def test_points_per_class_with_the_global_fallback(matches):
    points = choose_points(matches, TARGET, MIN_INSTANCES, tiou=0.5, split="val")
    # Dive alone: 0.9 → 1, 0.8 → 1, 0.7 → 2/3, 0.65 → 3/4 (reaches), 0.5 → 3/5, 0.4 → 4/6.
    dive = points.classes["Dive"]
    assert dive.calibrated and dive.min_score == 0.65 and dive.instances == 6
    assert dive.precision == pytest.approx(0.75) and dive.recall == pytest.approx(0.5)
    # All classes pooled, by score: T T T F T T(0.55: 5/6) F F T F T → 0.55 is the lowest reaching 0.75.
    assert points.global_min_score == 0.55
    assert points.global_point.calibrated and points.global_point.precision == pytest.approx(5 / 6)
    assert points.global_point.recall == pytest.approx(5 / 13)
    jump, run, swim = points.classes["Jump"], points.classes["Run"], points.classes["Swim"]
    assert not jump.calibrated and jump.min_score == 0.55 and "2 held-out instance(s), fewer than" in jump.note
    assert jump.precision == 1.0 and jump.recall == 1.0
    assert not run.calibrated and run.instances == 0 and "0 held-out instance(s)" in run.note
    assert run.precision is None and run.recall is None
    assert not swim.calibrated and "never reaches 0.75" in swim.note and "best 0.50" in swim.note
    assert swim.precision is None and swim.recall == 0.0  # no Swim segment scores 0.55
    assert points.min_score("Dive") == 0.65 and points.min_score("Jump") == 0.55
    assert points.min_score("a class the model never had") == 0.55


def test_the_report_counts_alerts_at_the_points(matches):
    points = choose_points(matches, TARGET, MIN_INSTANCES, tiou=0.5, split="val")
    report = alert_report(matches, points, hours=2.0)
    # Dive from 0.65: 0.9 0.8 0.7 0.65 (one false); Jump from 0.55: both true; Run and Swim: nothing scores 0.55.
    assert report["classes"]["Dive"] == {"alerts": 4, "true_alerts": 3, "false_alerts": 1, "instances": 6,
                                         "precision": 0.75, "recall": 0.5, "false_alerts_per_hour": 0.5}
    assert report["classes"]["Jump"]["precision"] == 1.0 and report["classes"]["Run"]["alerts"] == 0
    overall = report["overall"]
    assert (overall["alerts"], overall["true_alerts"], overall["false_alerts"]) == (6, 5, 1)
    assert overall["recall"] == pytest.approx(5 / 13) and overall["false_alerts_per_hour"] == 0.5


def test_a_class_with_no_held_out_instance_falls_back_even_with_a_perfect_segment():
    truth = Annotations({"v": _video("v", [("A", 10.0 * k, 10.0 * k + 5) for k in range(5)])}, ["A", "B"])
    detections = {"v": [{"label": "A", "score": 0.9 - 0.1 * k, "segment": [10.0 * k, 10.0 * k + 5]} for k in range(5)]
                  + [{"label": "B", "score": 0.99, "segment": [60, 70]}]}
    points = choose_points(match_detections(detections, truth, 0.5, keep_unscored=True), 0.8, 1, tiou=0.5, split="val")
    assert points.classes["A"].calibrated and points.classes["A"].min_score == pytest.approx(0.5)
    b = points.classes["B"]
    assert not b.calibrated and b.min_score == points.global_min_score and "0 held-out instance(s)" in b.note


# ------------------------------------------------------------------------------------------ the sidecar


def _points() -> OperatingPoints:
    return OperatingPoints(
        target_precision=0.8, tiou=0.5, split="val", global_min_score=0.4,
        classes={"A": ClassPoint("A", 0.7, True, 9, 0.8, 0.5),
                 "B": ClassPoint("B", 0.4, False, 1, None, 0.0, "1 held-out instance(s), fewer than 5")},
        test={"split": "test", "videos": 3, "hours": 0.5, "classes": {}, "overall": {"precision": None}},
        source={"run": "runs/train/exp", "weights_sha256": "ab" * 32},
        global_point=ClassPoint("*", 0.4, True, 10, 0.8, 0.4))


def test_the_sidecar_round_trips(tmp_path):
    assert read_operating_points(tmp_path) is None
    path = write_operating_points(tmp_path, _points())
    assert path == tmp_path / OPERATING_POINTS_NAME
    assert read_operating_points(tmp_path) == _points()
    assert read_operating_points(path) == _points()  # a file of the folder finds it too
    assert json.loads(path.read_text())["classes"]["A"] == {"min_score": 0.7, "calibrated": True, "instances": 9,
                                                            "precision": 0.8, "recall": 0.5, "note": ""}


@pytest.mark.parametrize("damage", [
    lambda raw: "{not json",
    lambda raw: json.dumps({**raw, "format": "something-else"}),
    lambda raw: json.dumps({**raw, "format_version": 99}),
    lambda raw: json.dumps({k: v for k, v in raw.items() if k != "classes"}),
    lambda raw: json.dumps({**raw, "global_min_score": "high"}),
    lambda raw: json.dumps({**raw, "classes": {"A": {**raw["classes"]["A"], "instances": -1}}}),
])
def test_a_malformed_sidecar_is_an_error_that_says_how_to_rewrite_it(tmp_path, damage):
    path = write_operating_points(tmp_path, _points())
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(CheckpointError, match="ecm-edge calibrate"):
        read_operating_points(tmp_path)


# ------------------------------------------------------------------------------------------ a trained run

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from train_helpers import make_dataset

    return make_dataset(tmp_path_factory.mktemp("calib") / "data")


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from train_helpers import single_thread, tiny_config

    from ecm_edge.train.trainer import train

    run = tmp_path_factory.mktemp("calib_run") / "run"
    with single_thread():
        train(tiny_config("train.epochs=8"), data_dir, run, progress=False)
    return run


LOW_BAR = ("alerts.precision=0.2", "alerts.min_instances=2")  # a few epochs on 18 videos: a weak model


def test_calibrating_a_run_chooses_on_the_videos_it_held_out(run_dir, data_dir):
    from ecm_edge.train.checkpoint import load_checkpoint

    result = calibrate_run(run_dir, data_dir, overrides=LOW_BAR)
    points = result.points
    assert result.path == run_dir / OPERATING_POINTS_NAME and read_operating_points(run_dir) == points
    held_out = load_checkpoint(run_dir / "last.pt")["eval_ids"]
    assert points.split == "val" and points.source["videos"] == len(held_out) > 0
    assert points.target_precision == 0.2 and points.source["min_instances"] == 2
    assert points.source["weights_sha256"] == json.loads((run_dir / "model.json").read_text())["weights_sha256"]
    assert set(points.classes) == set(json.loads((run_dir / "model.json").read_text())["class_names"])
    for point in points.classes.values():
        assert point.calibrated == (point.note == "")
        if point.calibrated:
            assert point.instances >= 2 and point.precision >= 0.2
        else:
            assert point.min_score == points.global_min_score
    test = points.test
    assert test["split"] == "test" and test["videos"] == 6 and test["hours"] > 0
    overall = test["overall"]
    assert overall["alerts"] == overall["true_alerts"] + overall["false_alerts"]
    assert overall["alerts"] == sum(row["alerts"] for row in test["classes"].values())


def test_held_out_videos_are_the_trainers(run_dir, data_dir):
    from ecm_edge.train.checkpoint import load_checkpoint

    trained = config_from_stored(json.loads((run_dir / "model.json").read_text())["config"], "model.json")
    assert split_videos(data_dir, "val", trained).video_ids == load_checkpoint(run_dir / "last.pt")["eval_ids"]


def test_the_many_stream_replay_gives_each_videos_own_localizer_segments(run_dir, data_dir):
    from ecm_edge.runtime.engine import StreamEngine
    from ecm_edge.runtime.localizer import Localizer

    trained = config_from_stored(json.loads((run_dir / "model.json").read_text())["config"], "model.json")
    dataset = VideoDataset.open(data_dir, trained, "test")
    with StreamEngine.from_artifacts(run_dir, "numpy", overrides=["stream.queue_snippets=16"]) as engine:
        replayed = stream_segments(engine, dataset)
    assert sum(map(len, replayed.values())) > 0
    for video_id in dataset.video_ids:
        with Localizer.from_artifacts(run_dir) as localizer:
            events = localizer.push_features(dataset.features(video_id), start_time=0.0) + localizer.flush()
        alone = [(e["label"], e["start"], e["end"], e["score"]) for e in events if e["type"] == "segment"]
        together = [(d["label"], *d["segment"], d["score"]) for d in replayed[video_id]]
        assert [x[0] for x in sorted(together)] == [x[0] for x in sorted(alone)], video_id
        assert np.allclose([x[1:] for x in sorted(together)], [x[1:] for x in sorted(alone)], atol=1e-4), video_id


def _edited_run(run_dir: Path, folder: Path, **config: float) -> Path:
    """A copy of the run whose model.json says it held no videos out (the weights' hash is unchanged)."""
    copy = shutil.copytree(run_dir, folder)
    meta = json.loads((copy / "model.json").read_text())
    meta["training"]["eval_split"] = None
    meta["config"]["data"].update(config)
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


def test_a_run_without_held_out_videos_calibrates_on_its_training_split(run_dir, data_dir, tmp_path, caplog):
    run = _edited_run(run_dir, tmp_path / "run", val_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="ecm_edge"):
        points = calibrate_run(run, data_dir, overrides=LOW_BAR, test=False).points
    assert points.split == "train" and points.source["videos"] == 12 and points.test is None
    assert "held no training videos out" in caplog.text
    with pytest.raises(DataError, match="no held-out videos"):
        calibrate_run(run, data_dir, split="val")


def test_clear_errors_for_missing_weights_and_missing_splits(run_dir, data_dir, tmp_path, caplog):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="--redeploy"):
        calibrate_run(empty, data_dir)
    no_test = shutil.copytree(data_dir, tmp_path / "no_test")
    (no_test / "split_test.txt").write_text("")
    with pytest.raises(DataError, match="split 'test'"):
        calibrate_run(run_dir, no_test, split="test")
    with caplog.at_level(logging.WARNING, logger="ecm_edge"):
        points = calibrate_run(run_dir, no_test, overrides=LOW_BAR).points
    assert points.test is None and "no test figures" in caplog.text


def test_calibration_replaces_damaged_points(run_dir, data_dir, tmp_path, caplog):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / OPERATING_POINTS_NAME).write_text("{damaged")
    with caplog.at_level(logging.WARNING, logger="ecm_edge"):
        points = calibrate_run(run, data_dir, overrides=LOW_BAR, test=False).points
    assert read_operating_points(run) == points and "replacing the unreadable operating points" in caplog.text
