"""Annotation readers on the real THUMOS14 files and on small crafted files with every kind of defect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ecm_edge.data.annotations import (
    load_activitynet_json,
    load_ambiguous,
    load_annotations,
    load_wtalc_reduced,
    read_split,
)
from ecm_edge.errors import DataError

THUMOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thumos14"
# The two test videos the W-TALC arrays hold and gt.json lacks (their annotations run past the video's end).
ONLY_IN_REDUCED = {"video_test_0000270", "video_test_0001496"}


@pytest.fixture(scope="module")
def thumos() -> Path:
    if not (THUMOS / "gt.json").is_file():
        pytest.skip(f"real THUMOS14 annotations not found at {THUMOS} (../shared/data/thumos14 from the repo root)")
    return THUMOS


@pytest.fixture(scope="module")
def real_gt(thumos):
    return load_activitynet_json(thumos / "gt.json")


def test_real_gt_json_counts(real_gt):
    assert len(real_gt.videos) == 410
    train, test = real_gt.subset("train"), real_gt.subset("test")
    assert (len(train.videos), len(test.videos)) == (200, 210)
    assert (train.num_segments, test.num_segments) == (3007, 3311)
    assert len(real_gt.class_names) == 20 and real_gt.class_names == sorted(real_gt.class_names)
    assert train.class_names == real_gt.class_names  # subsets keep the full class list
    # the file has no duration and no fps: they stay unknown rather than invented
    assert all(v.duration is None and v.fps is None for v in real_gt.videos.values())
    # string bounds ("18.6") are parsed to numbers, and every segment is well ordered
    first = real_gt.videos["video_test_0000896"]
    np.testing.assert_allclose(first.segments[0], [18.6, 24.8])
    assert all((v.segments[:, 1] >= v.segments[:, 0]).all() for v in real_gt.videos.values())


def test_real_split_files_match_the_subsets(thumos, real_gt):
    train_ids, test_ids = read_split(thumos / "split_train.txt"), read_split(thumos / "split_test.txt")
    assert (len(train_ids), len(test_ids)) == (200, 210)
    assert set(train_ids) == set(real_gt.subset("train").videos)
    assert set(test_ids) == set(real_gt.subset("test").videos)
    label = real_gt.multi_hot(test_ids[0])
    assert label.dtype == np.float32 and label.shape == (20,) and label.sum() >= 1


def test_real_reduced_folder_agrees_with_the_json(thumos, real_gt):
    reduced = load_wtalc_reduced(thumos / "reduced")
    assert len(reduced.videos) == 412 and reduced.num_segments == 6365
    subsets = [v.subset for v in reduced.videos.values()]
    assert (subsets.count("validation"), subsets.count("test")) == (200, 212)
    assert set(reduced.videos) - set(real_gt.videos) == ONLY_IN_REDUCED
    assert set(real_gt.videos) <= set(reduced.videos)
    assert reduced.class_names == real_gt.class_names
    for vid, video in real_gt.videos.items():
        other = reduced.videos[vid]
        assert sorted(other.labels) == sorted(video.labels), vid
        np.testing.assert_allclose(np.sort(other.segments, axis=0), np.sort(video.segments, axis=0), atol=1e-6)
        assert other.duration > 0 and other.fps in (24.0, 25.0, 30.0)
    # load_annotations tells the two layouts apart by what the path is
    assert len(load_annotations(thumos / "reduced").videos) == 412
    assert len(load_annotations(thumos / "gt.json").videos) == 410


def test_real_ambiguous_segments(thumos, real_gt):
    spans = load_ambiguous(thumos / "reduced" / "Ambiguous_test.txt")
    assert len(spans) == 37 and sum(len(s) for s in spans.values()) == 99
    # two of them are test videos the JSON leaves out (as the standard THUMOS14 evaluation does)
    assert set(spans) - set(real_gt.subset("test").videos) == {"video_test_0001292", "video_test_0001496"}
    assert all(s.shape[1] == 2 and (s[:, 1] >= s[:, 0]).all() for s in spans.values())


def write_json(path: Path, database: dict) -> Path:
    path.write_text(json.dumps({"database": database}))
    return path


def test_string_and_numeric_bounds_and_optional_fields(tmp_path):
    path = write_json(tmp_path / "gt.json", {
        "a": {"subset": "validation", "annotations": [{"segment": ["1.5", "3"], "label": "Jump"}]},
        "b": {"subset": "testing", "duration": "12.5", "fps": 30,
              "annotations": [{"segment": [1.5, 3.0], "label": "Run"}, {"segment": [4, 4], "label": "Jump"}]},
    })
    ann = load_annotations(path)
    np.testing.assert_array_equal(ann.videos["a"].segments, ann.videos["b"].segments[:1])
    assert (ann.videos["a"].duration, ann.videos["a"].fps) == (None, None)
    assert (ann.videos["b"].duration, ann.videos["b"].fps) == (12.5, 30.0)
    assert (ann.videos["a"].subset, ann.videos["b"].subset) == ("validation", "test")
    assert ann.class_names == ["Jump", "Run"]
    np.testing.assert_array_equal(ann.multi_hot("b"), [1.0, 1.0])
    # what is written reads back the same
    again = load_activitynet_json(ann.save_json(tmp_path / "copy.json"))
    assert again.videos["b"].labels == ann.videos["b"].labels and again.videos["b"].duration == 12.5
    np.testing.assert_array_equal(again.videos["b"].segments, ann.videos["b"].segments)


@pytest.mark.parametrize(("entry", "words"), [
    ({"subset": "test", "annotations": [{"segment": [5.0, 4.0], "label": "Jump"}]}, ["vid7", "ends before"]),
    ({"subset": "test", "annotations": [{"segment": ["x", 4.0], "label": "Jump"}]}, ["vid7", "segment"]),
    ({"subset": "test", "annotations": [{"segment": [1.0, 4.0]}]}, ["vid7", "label"]),
    ({"subset": "test", "annotations": [{"segment": [1.0, "nan"], "label": "Jump"}]}, ["vid7", "finite"]),
    ({"subset": "test", "duration": "long", "annotations": []}, ["vid7", "duration"]),
])
def test_bad_entries_name_file_and_video(tmp_path, entry, words):
    path = write_json(tmp_path / "gt.json", {"vid7": entry})
    with pytest.raises(DataError) as err:
        load_activitynet_json(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_unknown_label_against_a_class_list(tmp_path):
    path = write_json(tmp_path / "gt.json", {"v1": {"subset": "test", "annotations": [
        {"segment": [0, 1], "label": "Swim"}]}})
    with pytest.raises(DataError, match=r"v1.*'Swim'.*not one of the 2 known classes"):
        load_activitynet_json(path, class_names=["Jump", "Run"])
    assert load_activitynet_json(path, class_names=["Run", "Swim"]).class_names == ["Run", "Swim"]


@pytest.mark.parametrize("text", ["{not json", '{"videos": {}}', "[1, 2]", '{"database": {"v": 3}}'])
def test_malformed_json_is_a_data_error_naming_the_file(tmp_path, text):
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_activitynet_json(path)


def test_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_activitynet_json(tmp_path / "none.json")
    with pytest.raises(DataError, match="split file"):
        read_split(tmp_path / "split_train.txt")
    with pytest.raises(DataError, match=r"neither gt\.json nor a W-TALC layout"):
        load_annotations(tmp_path)


def test_split_and_ambiguous_text_files(tmp_path):
    split = tmp_path / "split.txt"
    split.write_text("v1\n\n  v2  \n")
    assert read_split(split) == ["v1", "v2"]
    ambiguous = tmp_path / "Ambiguous_test.txt"
    ambiguous.write_text("v1 1.0 2.0\nv1 3 4\n\nv2 5 6\n")
    spans = load_ambiguous(ambiguous)
    np.testing.assert_array_equal(spans["v1"], [[1, 2], [3, 4]])
    ambiguous.write_text("v1 1.0\n")
    with pytest.raises(DataError, match=r"Ambiguous_test\.txt:1"):
        load_ambiguous(ambiguous)


def write_wtalc(folder: Path, segments: list, labels: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"video_{i}" for i in range(len(segments))]

    def objects(items: list) -> np.ndarray:
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array

    np.save(folder / "videoname.npy", np.array([n.encode() for n in names]))
    np.save(folder / "subset.npy", np.array([b"validation"] + [b"test"] * (len(names) - 1)))
    np.save(folder / "segments.npy", objects(segments), allow_pickle=True)
    np.save(folder / "labels.npy", objects(labels), allow_pickle=True)
    np.save(folder / "classlist.npy", np.array([b"Run", b"Jump"]))
    np.save(folder / "duration.npy", np.array([[10.0]] * len(names)))
    return folder


def test_wtalc_layout_reader_and_its_errors(tmp_path):
    folder = write_wtalc(tmp_path / "ok", [[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]]], [["Run"], ["Jump", "Run"]])
    ann = load_wtalc_reduced(folder)
    assert ann.class_names == ["Jump", "Run"] and ann.videos["video_1"].labels == ["Jump", "Run"]
    assert ann.videos["video_0"].subset == "validation" and ann.videos["video_0"].duration == 10.0
    bad = write_wtalc(tmp_path / "count", [[[1.0, 2.0], [3.0, 4.0]]], [["Run"]])
    with pytest.raises(DataError, match="'video_0' has 2 segments but 1 labels"):
        load_wtalc_reduced(bad)
    reversed_segment = write_wtalc(tmp_path / "order", [[[4.0, 2.0]]], [["Run"]])
    with pytest.raises(DataError, match=r"video_0.*ends before it starts"):
        load_wtalc_reduced(reversed_segment)
    (folder / "labels.npy").unlink()
    with pytest.raises(DataError, match=r"labels\.npy is missing"):
        load_wtalc_reduced(folder)
