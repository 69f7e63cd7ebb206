"""VideoDataset (timing, labels, restriction, cache), resampling to T_fixed, and the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecm_edge.config import load_config
from ecm_edge.data.dataset import FeatureCache, VideoDataset, resample_features, sample_indices, split_holdout
from ecm_edge.errors import DataError

D = 4


def config(*overrides: str):
    return load_config("small", [f"data.feature_dim={D}", *overrides])


def write_flat_dataset(root: Path, videos: dict[str, dict], lengths: dict[str, int],
                       splits: dict[str, list[str]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gt.json").write_text(json.dumps({"database": videos}))
    for split, ids in (splits or {}).items():
        (root / f"split_{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "features").mkdir()
    for vid, length in lengths.items():
        np.save(root / "features" / f"{vid}.npy", np.full((length, D), float(length), np.float32))
    return root


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    videos = {
        "tr1": {"subset": "train", "duration": 10.0, "fps": 30.0,
                "annotations": [{"segment": [1, 2], "label": "Run"}, {"segment": [3, 4], "label": "Jump"}]},
        "tr2": {"subset": "train", "annotations": [{"segment": [0, 1], "label": "Run"}]},
        "te1": {"subset": "test", "annotations": [{"segment": [0, 1], "label": "Swim"}]},
    }
    return write_flat_dataset(tmp_path / "data", videos, {"tr1": 16, "tr2": 7, "te1": 1},
                              {"train": ["tr2", "tr1"], "test": ["te1"]})


def test_labels_classes_and_timing(dataset_dir):
    train = VideoDataset.open(dataset_dir, config(), "train")
    assert len(train) == 2 and train.video_ids == ["tr2", "tr1"] and train.split == "train"
    assert train.class_names == ["Jump", "Run", "Swim"]  # from every subset: the class-index order everywhere
    assert list(train.annotations.videos) == ["tr2", "tr1"]
    np.testing.assert_array_equal(train.labels("tr1"), np.array([1, 1, 0], np.float32))
    assert train.labels("tr1").dtype == np.float32
    # annotated duration and fps win
    assert (train.duration("tr1"), train.fps("tr1"), train.num_frames("tr1")) == (10.0, 30.0, 300)
    # otherwise T · 0.64 s and data.default_fps (25)
    assert train.num_snippets("tr2") == 7
    assert train.duration("tr2") == pytest.approx(7 * 0.64)
    assert train.fps("tr2") == 25.0 and train.num_frames("tr2") == round(7 * 0.64 * 25)
    assert config("data.default_fps=30").data.default_fps == 30.0
    assert VideoDataset.open(dataset_dir, config("data.default_fps=30"), "train").fps("tr2") == 30.0
    test = VideoDataset.open(dataset_dir, config(), "test")
    assert test.num_snippets("te1") == 1 and test.features("te1").shape == (1, D)
    with pytest.raises(DataError, match="'tr1' is not part of the test split"):
        test.features("tr1")


def test_subset_ids_restricts_and_shares_the_cache(dataset_dir):
    train = VideoDataset.open(dataset_dir, config(), "train")
    part = train.subset_ids(["tr1"])
    assert part.video_ids == ["tr1"] and len(part) == 1 and part.class_names == train.class_names
    assert part.features("tr1") is train.features("tr1")  # one decoded copy
    with pytest.raises(DataError, match="'tr2'"):
        part.labels("tr2")
    with pytest.raises(DataError, match="'nope'"):
        train.subset_ids(["nope"])


def test_split_falls_back_to_annotation_subsets(tmp_path):
    videos = {"a": {"subset": "validation", "annotations": [{"segment": [0, 1], "label": "Run"}]},
              "b": {"subset": "test", "annotations": [{"segment": [0, 1], "label": "Run"}]}}
    root = write_flat_dataset(tmp_path / "d", videos, {"a": 3, "b": 2})
    assert VideoDataset.open(root, config(), "train").video_ids == ["a"]
    assert VideoDataset.open(root, config(), "test").video_ids == ["b"]


def test_open_errors_say_what_is_wrong(tmp_path, dataset_dir):
    with pytest.raises(DataError, match=r"does not exist.*ecm-edge synth"):
        VideoDataset.open(tmp_path / "missing", config(), "train")
    with pytest.raises(DataError, match="unknown split 'val'"):
        VideoDataset.open(dataset_dir, config(), "val")
    (dataset_dir / "split_test.txt").write_text("te1\nghost\n")
    with pytest.raises(DataError, match=r"split_test\.txt.*'ghost'"):
        VideoDataset.open(dataset_dir, config(), "test")
    (dataset_dir / "gt.json").unlink()
    with pytest.raises(DataError, match="has no annotations"):
        VideoDataset.open(dataset_dir, config(), "train")


def test_feature_cache_is_bounded_by_bytes():
    cache = FeatureCache(max_bytes=3 * 400)
    for i in range(10):
        cache.put(f"v{i}", np.zeros(100, np.float32))  # 400 bytes each
    assert len(cache) == 3 and cache.nbytes <= 1200
    assert cache.get("v9") is not None and cache.get("v0") is None
    cache.get("v7")  # recently used: survives the next insertion
    cache.put("v10", np.zeros(100, np.float32))
    assert cache.get("v7") is not None and cache.get("v8") is None
    off = FeatureCache(0)
    off.put("x", np.zeros(1, np.float32))
    assert off.get("x") is None


def test_dataset_cache_follows_the_config(dataset_dir):
    train = VideoDataset.open(dataset_dir, config("data.cache_mb=0"), "train")
    first = train.features("tr1")
    assert train.features("tr1") is not first and len(train.cache) == 0
    np.testing.assert_array_equal(first, train.features("tr1"))


# -- resampling ------------------------------------------------------------------------------------------------


def test_uniform_sampling_takes_each_bin_start():
    features = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = resample_features(features, 4)
    np.testing.assert_array_equal(out[:, 0], [0, 2, 5, 7])  # floor(i · 10 / 4)
    np.testing.assert_array_equal(resample_features(features, 10), features)


@pytest.mark.parametrize("rng", [None, np.random.default_rng(0)], ids=["uniform", "perturbed"])
@pytest.mark.parametrize("length", [1, 3, 7])
def test_short_videos_repeat_snippets_in_order(length, rng):
    features = np.arange(length, dtype=np.float32)[:, None]
    out = resample_features(features, 16, rng)
    assert out.shape == (16, 1)
    np.testing.assert_array_equal(out[:, 0], np.floor(np.arange(16) * length / 16))
    assert set(out[:, 0]) == set(range(length))  # every snippet is used, none skipped


def test_perturbation_stays_in_its_bin_and_reaches_every_index():
    length, t_fixed = 23, 5
    starts = np.arange(t_fixed) * length / t_fixed
    low = np.floor(starts).astype(int)
    high = np.append(np.floor(starts[1:]).astype(int), length - 1)
    seen = [set() for _ in range(t_fixed)]
    rng = np.random.default_rng(1)
    for _ in range(400):
        idx = sample_indices(length, t_fixed, rng)
        assert ((idx >= low) & (idx <= high)).all()
        for i, j in enumerate(idx):
            seen[i].add(int(j))
    assert all(seen[i] == set(range(low[i], high[i] + 1)) for i in range(t_fixed))


def test_perturbation_is_deterministic_with_a_seeded_rng():
    features = np.random.default_rng(0).random((100, 2), dtype=np.float32)
    a = resample_features(features, 32, np.random.default_rng(7))
    b = resample_features(features, 32, np.random.default_rng(7))
    c = resample_features(features, 32, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resampling_rejects_bad_input():
    with pytest.raises(DataError, match=r"\[T, D\]"):
        resample_features(np.zeros(5, np.float32), 4)
    with pytest.raises(DataError, match="at least 1"):
        resample_features(np.zeros((0, 2), np.float32), 4)


# -- held-out split ------------------------------------------------------------------------------------------


def test_holdout_is_deterministic_and_partitions():
    ids = [f"v{i:02d}" for i in range(40)]
    train, val = split_holdout(ids, 0.25, seed=3)
    assert len(val) == 10 and len(train) == 30
    assert sorted(train + val) == sorted(ids) and not set(train) & set(val)
    assert train == [v for v in ids if v in set(train)]  # input order kept
    assert split_holdout(ids, 0.25, seed=3) == (train, val)
    shuffled = list(reversed(ids))
    _, val2 = split_holdout(shuffled, 0.25, seed=3)
    assert set(val2) == set(val)  # depends on the set of ids, not their order
    assert set(split_holdout(ids, 0.25, seed=4)[1]) != set(val)
    assert split_holdout(ids, 0.0, seed=3) == (ids, [])


def test_holdout_keeps_every_class_in_training():
    # 3 classes, one of which has a single video: it can never be held out
    labels = {f"a{i}": ["A"] for i in range(6)} | {f"b{i}": ["B"] for i in range(3)} | {"c0": ["C", "A"]}
    ids = sorted(labels)
    for seed in range(20):
        train, val = split_holdout(ids, 0.5, seed, labels=labels)
        assert "c0" in train
        assert {c for v in train for c in labels[v]} == {"A", "B", "C"}
    # asking for more than the rule allows holds out fewer: c0 and one b-video must stay (9 asked, 8 given)
    train, val = split_holdout(ids, 0.9, 0, labels=labels)
    assert len(val) == 8 and {c for v in train for c in labels[v]} == {"A", "B", "C"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.sampled_from("ABCDE"), min_size=1, max_size=2), min_size=1, max_size=30),
       st.floats(0.0, 0.95), st.integers(0, 2**16))
def test_holdout_property_classes_survive(classes_per_video, fraction, seed):
    ids = [f"v{i}" for i in range(len(classes_per_video))]
    labels = {v: sorted(c) for v, c in zip(ids, classes_per_video, strict=True)}
    train, val = split_holdout(ids, fraction, seed, labels=labels)
    assert sorted(train + val) == sorted(ids)
    assert len(val) <= round(fraction * len(ids))
    assert {c for v in train for c in labels[v]} == {c for v in ids for c in labels[v]}


def test_holdout_rejects_bad_fractions_and_duplicates():
    with pytest.raises(DataError, match="fraction"):
        split_holdout(["a", "b"], 1.0, 0)
    with pytest.raises(DataError, match="unique"):
        split_holdout(["a", "a"], 0.5, 0)


def test_dataset_holdout_uses_the_labels(tmp_path):
    videos = {f"v{i}": {"subset": "train", "annotations": [{"segment": [0, 1], "label": "Run" if i else "Jump"}]}
              for i in range(8)}
    root = write_flat_dataset(tmp_path / "h", videos, dict.fromkeys(videos, 2))
    train = VideoDataset.open(root, config(), "train")
    for seed in range(10):
        part, val = train.holdout(0.5, seed)
        assert "v0" in part.video_ids and len(val) == 4
        assert isinstance(val, VideoDataset) and val.split == "train"
