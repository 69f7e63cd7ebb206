"""Feature files in all three layouts, read through VideoDataset, and every kind of bad file.

Each layout is written for real into a temporary dataset folder; the same features must come back from each,
and each defect must raise a DataError that names the video and the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ecm_edge.config import load_config
from ecm_edge.data.dataset import VideoDataset
from ecm_edge.data.features import (
    FlatFeatureStore,
    ModalityFeatureStore,
    WtalcFeatureStore,
    open_feature_store,
    read_feature_file,
)
from ecm_edge.errors import DataError

D = 6  # 3 rgb + 3 flow channels
LAYOUTS = ("modality", "flat", "wtalc")
ARRAY_FILE = "Tiny-I3D-JOINTFeatures.npy"
TRAIN = {"v_a": 5, "v_b": 1}  # video -> T (one video of a single snippet)
TEST = {"v_c": 3}


def config():
    return load_config("small", [f"data.feature_dim={D}", "data.t_fixed=8"])


def tiny_features(seed: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed).random((length, D), dtype=np.float32)


def expected_features() -> dict[str, np.ndarray]:
    return {vid: tiny_features(i, t) for i, (vid, t) in enumerate({**TRAIN, **TEST}.items())}


def object_array(items: list) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def write_dataset(root: Path, layout: str, features: dict[str, np.ndarray | None]) -> Path:
    """gt.json, split files and the features in ``layout``; a ``None`` feature is left out (missing)."""
    database = {}
    for vid in features:
        subset = "train" if vid in TRAIN else "test"
        database[vid] = {"subset": subset, "annotations": [{"segment": [0.0, 0.5], "label": "Jump" if vid != "v_b"
                                                             else "Run"}]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "gt.json").write_text(json.dumps({"database": database}))
    (root / "split_train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "split_test.txt").write_text("\n".join(TEST) + "\n")
    folder = root / "features"
    present = {vid: f for vid, f in features.items() if f is not None}
    if layout == "modality":
        for vid, f in present.items():
            split = "train" if vid in TRAIN else "test"
            for name, part in (("rgb", f[:, : D // 2]), ("flow", f[:, D // 2:])):
                (folder / split / name).mkdir(parents=True, exist_ok=True)
                np.save(folder / split / name / f"{vid}.npy", part)
    elif layout == "flat":
        folder.mkdir(parents=True)
        for vid, f in present.items():
            np.save(folder / f"{vid}.npy", f)
    else:
        folder.mkdir(parents=True)
        np.save(folder / "videoname.npy", np.array([v.encode() for v in present]))
        np.save(folder / ARRAY_FILE, object_array(list(present.values())), allow_pickle=True)
    return root


def feature_file(root: Path, layout: str, vid: str) -> Path:
    """The file a defect for ``vid`` is written into (its rgb part in the modality layout)."""
    if layout == "modality":
        return root / "features" / ("train" if vid in TRAIN else "test") / "rgb" / f"{vid}.npy"
    if layout == "flat":
        return root / "features" / f"{vid}.npy"
    return root / "features" / ARRAY_FILE


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_same_features(tmp_path, layout):
    truth = expected_features()
    root = write_dataset(tmp_path / layout, layout, truth)
    store = open_feature_store(root, D, ["rgb", "flow"])
    assert store.layout == layout
    assert isinstance(store, {"modality": ModalityFeatureStore, "flat": FlatFeatureStore,
                              "wtalc": WtalcFeatureStore}[layout])
    for split, videos in (("train", TRAIN), ("test", TEST)):
        ds = VideoDataset.open(root, config(), split)
        assert ds.video_ids == list(videos)
        for vid, length in videos.items():
            features = ds.features(vid)
            assert features.dtype == np.float32 and features.shape == (length, D)
            np.testing.assert_array_equal(features, truth[vid])
            assert ds.num_snippets(vid) == length
            assert not features.flags.writeable  # cached arrays cannot be changed by a caller by accident


def test_modality_layout_concatenates_in_config_order(tmp_path):
    truth = expected_features()
    root = write_dataset(tmp_path / "m", "modality", truth)
    flipped = load_config("small", [f"data.feature_dim={D}", "data.modalities=[flow, rgb]"])
    features = VideoDataset.open(root, flipped, "test").features("v_c")
    np.testing.assert_array_equal(features, np.concatenate([truth["v_c"][:, D // 2:], truth["v_c"][:, : D // 2]], 1))


def defects():
    """name -> (what to write over the video's file, words the error must contain besides video and file)."""
    return {
        "wrong_dim": (lambda f: np.ones((f.shape[0], D + 2), np.float32), ["expected [T", f"{D}]"]),
        "nan": (lambda f: np.where(np.arange(f.size).reshape(f.shape) == 1, np.nan, f).astype(np.float32),
                ["NaN", "snippet 0"]),
        "inf": (lambda f: np.full_like(f, np.inf), ["Inf"]),
        "no_snippets": (lambda f: np.zeros((0, D), np.float32), ["no snippets"]),
        "one_dimensional": (lambda f: np.ones(D, np.float32), ["expected [T", f"{D}]"]),
        "empty_file": (b"", ["empty"]),
        "unreadable": (b"this is not a numpy file", ["cannot be read"]),
    }


def write_defect(root: Path, layout: str, vid: str, defect) -> None:
    path = feature_file(root, layout, vid)
    if isinstance(defect, bytes):
        path.write_bytes(defect)
        return
    truth = expected_features()
    if layout == "wtalc":
        bad = dict(truth)
        bad[vid] = defect(truth[vid])
        np.save(path, object_array(list(bad.values())), allow_pickle=True)
    elif layout == "flat":
        np.save(path, defect(truth[vid]))
    else:
        full = defect(truth[vid])
        np.save(path, full[..., : full.shape[-1] - D // 2] if full.ndim == 2 else full)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("defect", list(defects()))
def test_bad_feature_file_names_video_and_file(tmp_path, layout, defect):
    change, words = defects()[defect]
    root = write_dataset(tmp_path / layout, layout, expected_features())
    write_defect(root, layout, "v_a", change)
    ds = VideoDataset.open(root, config(), "train")
    with pytest.raises(DataError) as err:
        ds.features("v_a")
    message = str(err.value)
    assert "'v_a'" in message and str(feature_file(root, layout, "v_a")) in message, message
    if not (layout == "wtalc" and isinstance(change, bytes)):  # a broken array file has no per-video shape
        for word in words:
            assert word in message, message
    # the other videos are unaffected unless the defect broke the one shared array file
    if not (layout == "wtalc" and isinstance(change, bytes)):
        assert ds.features("v_b").shape == (1, D)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_missing_features_are_reported_when_the_dataset_opens(tmp_path, layout):
    features = expected_features()
    features["v_b"] = None
    root = write_dataset(tmp_path / layout, layout, features)
    with pytest.raises(DataError) as err:
        VideoDataset.open(root, config(), "train")
    message = str(err.value)
    assert "1 of 2 train video(s)" in message and "'v_b'" in message
    assert str(root / "features") in message  # where it looked
    assert VideoDataset.open(root, config(), "test").features("v_c").shape == (3, D)


def test_modalities_may_differ_by_one_snippet_but_not_more(tmp_path):
    root = write_dataset(tmp_path / "m", "modality", expected_features())
    flow = root / "features" / "train" / "flow" / "v_a.npy"
    np.save(flow, np.ones((4, D // 2), np.float32))  # rgb has 5
    ds = VideoDataset.open(root, config(), "train")
    assert ds.features("v_a").shape == (4, D) and ds.num_snippets("v_a") == 4
    np.save(flow, np.ones((2, D // 2), np.float32))
    fresh = VideoDataset.open(root, config(), "train")
    with pytest.raises(DataError, match=r"'v_a'.*disagree.*rgb: T=5, flow: T=2"):
        fresh.features("v_a")


def test_pickled_objects_in_a_per_video_file_are_refused(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, object_array([np.ones((2, D))]), allow_pickle=True)
    with pytest.raises(DataError, match=r"'v'.*pickled Python objects"):
        read_feature_file(path, "v", D)


def test_wrong_dimension_is_also_caught_from_the_header(tmp_path):
    root = write_dataset(tmp_path / "f", "flat", expected_features())
    np.save(root / "features" / "v_a.npy", np.ones((5, D + 1), np.float32))
    ds = VideoDataset.open(root, config(), "train")
    with pytest.raises(DataError, match=re.escape(f"shape (5, {D + 1}), expected [T >= 1, {D}]")):
        ds.num_snippets("v_a")


def test_a_folder_without_features_says_what_it_expected(tmp_path):
    root = write_dataset(tmp_path / "none", "flat", {})
    with pytest.raises(DataError, match="no features found under"):
        open_feature_store(root, D, ["rgb", "flow"])


def test_full_wtalc_folder_without_gt_json_or_split_files(tmp_path):
    """Annotations and features both in W-TALC form in one folder; splits come from the subsets."""
    folder = tmp_path / "wtalc"
    folder.mkdir()
    truth = expected_features()
    names = list(truth)
    np.save(folder / "videoname.npy", np.array([n.encode() for n in names]))
    np.save(folder / "subset.npy", np.array([b"validation" if n in TRAIN else b"test" for n in names]))
    np.save(folder / "segments.npy", object_array([[[0.0, 0.5]] for _ in names]), allow_pickle=True)
    np.save(folder / "labels.npy", object_array([["Jump"] for _ in names]), allow_pickle=True)
    np.save(folder / "classlist.npy", np.array([b"Jump", b"Run"]))
    np.save(folder / "duration.npy", np.array([[2.0]] * len(names)))
    np.save(folder / ARRAY_FILE, object_array(list(truth.values())), allow_pickle=True)
    train = VideoDataset.open(folder, config(), "train")
    assert train.video_ids == sorted(TRAIN) and train.store.layout == "wtalc"
    assert train.class_names == ["Jump", "Run"] and train.duration("v_a") == 2.0
    np.testing.assert_array_equal(train.features("v_a"), truth["v_a"])
    assert VideoDataset.open(folder, config(), "test").video_ids == list(TEST)


@pytest.mark.parametrize(("content", "words"), [
    (b"0.1,0.2\n0.3,0.4\n", "it is not a .npy file (it does not start with the NumPy file signature; it looks "
                            "like a text file)"),
    (b"PK\x03\x04zipped", "it is not a .npy file (it does not start with the NumPy file signature; it looks "
                          "like a .npz archive or another zip file)"),
])
def test_a_file_that_is_not_npy_is_named_as_such_not_as_pickled_data(tmp_path, content, words):
    path = tmp_path / "v.npy"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_feature_file(path, "v", D)
    assert words in str(err.value) and "pickle" not in str(err.value)
