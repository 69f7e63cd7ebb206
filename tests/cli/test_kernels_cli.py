"""Raw predictions on disk, ``ecm-edge postprocess``, the benchmark's inputs and its report."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ecm_edge.cli.main import main
from ecm_edge.errors import DataError
from ecm_edge.kernels import PostParams
from ecm_edge.postprocess import localize_batch
from ecm_edge.rawpred import RawPredictions

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thumos14"


def raw_predictions(videos: int = 4, classes: int = 3, weights: bool = False) -> RawPredictions:
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 40, videos)
    cas = np.zeros((videos, classes, int(lengths.max())), dtype=np.float32)
    for v, length in enumerate(lengths):
        cas[v, :, :length] = rng.normal(-0.5, 1.0, (classes, length))
    frames = lengths * 12
    return RawPredictions(
        video_ids=[f"video_{v}" for v in range(videos)], cas=cas, lengths=lengths,
        video_scores=rng.uniform(0.1, 0.9, (videos, classes)), num_frames=frames,
        fps=np.full(videos, 30.0), duration=frames / 30.0, class_names=[f"Class{c}" for c in range(classes)],
        weights=rng.uniform(0, 1, cas.shape).astype(np.float32) if weights else None)


@pytest.mark.parametrize("weights", [False, True])
def test_raw_predictions_round_trip(tmp_path, weights):
    raw = raw_predictions(weights=weights)
    path = raw.save(tmp_path / "raw.npz")
    loaded = RawPredictions.load(path)
    assert loaded.video_ids == raw.video_ids and loaded.class_names == raw.class_names
    for key in ("cas", "lengths", "video_scores", "num_frames", "fps", "duration"):
        assert np.array_equal(getattr(loaded, key), getattr(raw, key)), key
    assert (loaded.weights is None) == (not weights)
    assert not [p for p in tmp_path.iterdir() if p.name != "raw.npz"], "temporary files left behind"


def test_raw_predictions_name_the_file_and_the_problem(tmp_path):
    raw = raw_predictions()
    arrays = {"video_ids": np.array(raw.video_ids), "cas": raw.cas, "lengths": raw.lengths}
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(DataError, match=r"partial\.npz lacks video_scores, num_frames, fps, duration, class_names"):
        RawPredictions.load(tmp_path / "partial.npz")
    full = {**arrays, "video_scores": raw.video_scores[:, :2], "num_frames": raw.num_frames, "fps": raw.fps,
            "duration": raw.duration, "class_names": np.array(raw.class_names)}
    np.savez(tmp_path / "shapes.npz", **full)
    with pytest.raises(DataError, match=r"shapes\.npz: video_scores must have shape \[4, 3\]"):
        RawPredictions.load(tmp_path / "shapes.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        RawPredictions.load(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="does not exist"):
        RawPredictions.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(raw.save(tmp_path / "ok.npz"))


def test_postprocess_command_writes_activitynet_json(tmp_path, capsys):
    raw = raw_predictions()
    raw.save(tmp_path / "raw.npz")
    out = tmp_path / "pred.json"
    with pytest.raises(SystemExit) as done:
        main(["postprocess", str(tmp_path / "raw.npz"), "--config", "thumos14", "--set", "post.mode=clean",
              "--kernels", "cpu", "-o", str(out)])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["version"] == "VERSION 1.3" and set(document["results"]) == set(raw.video_ids)
    count = sum(len(v) for v in document["results"].values())
    assert count > 0 and f"{count} detections in 4 videos (clean mode, cpu kernels" in printed
    assert f"wrote {out}" in printed and f"ecm-edge eval --pred {out}" in printed
    params = PostParams(mode="clean")
    dets = localize_batch(raw.cas, raw.video_scores, lengths=raw.lengths, num_frames=raw.num_frames,
                          fps=raw.fps, params=params, kernels="numpy")
    first = dets[dets["video"] == 0][0]
    top = document["results"]["video_0"][0]
    assert top["label"] == raw.class_names[first["cls"]] and top["segment"] == [first["start"], first["end"]]


def test_postprocess_command_reports_bad_input_in_one_line(tmp_path, capsys):
    (tmp_path / "raw.npz").write_bytes(b"nope")
    with pytest.raises(SystemExit) as done:  # --backend: --kernels' former spelling, a hidden alias
        main(["postprocess", str(tmp_path / "raw.npz"), "--backend", "cpu"])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip().startswith("error: ")


def test_bench_inputs_look_like_thumos14():
    from ecm_edge.bench.postprocess import FPS, thumos_like_inputs

    inputs = thumos_like_inputs(30)
    assert inputs.cas.shape == (30, 20, 750) and inputs.cas.dtype == np.float32
    kept = (inputs.video_scores >= 0.25).sum(axis=1)
    assert kept.min() >= 2 and kept.max() <= 4
    if DATA.is_dir():
        durations = np.load(DATA / "reduced" / "duration.npy").reshape(-1)
        assert np.isin(inputs.num_frames, np.round(durations * FPS)).all()
        assert "real durations" in inputs.source


def test_bench_part_reports_speedups_and_identical_detections():
    from ecm_edge.bench.postprocess import run

    section = run(quick=True)
    rows = {row[0]: row for row in section.rows}
    assert rows["numpy (reference)"][3] == 1.0
    cpu = [row for name, row in rows.items() if name.startswith("cpu")]
    assert cpu and all(row[-1] == "yes" and row[3] > 1.0 for row in cpu)
    assert "postprocess" in __import__("ecm_edge.bench", fromlist=["PARTS"]).PARTS
