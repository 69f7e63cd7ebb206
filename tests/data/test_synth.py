"""The synthetic dataset generator: determinism, the layout, THUMOS14-like statistics, real timelines, and
features in which class evidence is learnable but wrapped in the traps of weak supervision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ecm_edge.cli.main import main
from ecm_edge.config import load_config
from ecm_edge.data.annotations import load_activitynet_json, load_wtalc_reduced
from ecm_edge.data.dataset import VideoDataset
from ecm_edge.data.synth import (
    PRESETS,
    SNIPPET_SECONDS,
    SynthSettings,
    generate_dataset,
    plan_dataset,
    render_features,
    snippets_for_duration,
)
from ecm_edge.errors import ConfigError

THUMOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "thumos14"


@pytest.fixture(scope="module")
def thumos() -> Path:
    if not (THUMOS / "gt.json").is_file():
        pytest.skip(f"real THUMOS14 annotations not found at {THUMOS} (../shared/data/thumos14 from the repo root)")
    return THUMOS


def tiny_settings(seed: int = 0, **overrides) -> SynthSettings:
    args = {"num_classes": 4, "feature_dim": 16, "num_videos": 6} | overrides
    return SynthSettings.from_preset("small", seed=seed, **args)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    generate_dataset(tmp_path / "a", tiny_settings(seed=5))
    generate_dataset(tmp_path / "b", tiny_settings(seed=5))
    generate_dataset(tmp_path / "c", tiny_settings(seed=6))
    a, b, c = all_files(tmp_path / "a"), all_files(tmp_path / "b"), all_files(tmp_path / "c")
    assert len(a) == 6 * 2 + 4 and a == b
    assert a["gt.json"] != c["gt.json"]
    assert not any(name.startswith(".") for name in a)  # no temporary files left behind


def test_dataset_layout_is_readable(tmp_path):
    settings = tiny_settings(num_videos=9, num_classes=5)
    report = generate_dataset(tmp_path / "d", settings)
    root = tmp_path / "d"
    cfg = load_config("small", ["data.feature_dim=16", "model.num_classes=5"])
    train, test = VideoDataset.open(root, cfg, "train"), VideoDataset.open(root, cfg, "test")
    assert (len(train), len(test)) == (report.num_train, report.num_test) == (6, 3)
    assert train.store.layout == "modality"
    assert train.class_names == test.class_names == [f"action{i:02d}" for i in range(5)]
    gt = json.loads((root / "gt.json").read_text())["database"]
    assert {v["subset"] for v in gt.values()} == {"train", "test"}
    for ds in (train, test):
        for vid in ds.video_ids:
            features = ds.features(vid)
            assert features.dtype == np.float32 and features.shape[1] == 16
            assert (features >= 0).all() and np.isfinite(features).all() and features.max() > 0
            for modality in ("rgb", "flow"):
                part = np.load(root / "features" / ds.split / modality / f"{vid}.npy")
                assert part.shape == (features.shape[0], 8)
            assert ds.labels(vid).sum() >= 1
            assert "duration" in gt[vid] and "fps" in gt[vid]
            # T snippets of 0.64 s cover the duration
            assert ds.num_snippets(vid) == snippets_for_duration(ds.duration(vid))
            assert 0 <= ds.num_snippets(vid) * SNIPPET_SECONDS - ds.duration(vid) < SNIPPET_SECONDS
    meta = json.loads((root / "synth.json").read_text())
    assert meta["settings"]["seed"] == 0 and meta["settings"]["feature_dim"] == 16
    assert (root / "split_train.txt").read_text().split() == train.video_ids


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_timelines_are_well_formed(preset):
    settings = SynthSettings.from_preset(preset, seed=1)
    world, videos, _ = plan_dataset(settings)
    assert sum(v.subset == "train" for v in videos) == PRESETS[preset].num_train
    assert sum(v.subset == "test" for v in videos) == PRESETS[preset].num_test
    low, high = PRESETS[preset].duration_range
    for video in videos:
        assert low <= video.duration <= high and video.fps in (24.0, 25.0, 30.0)
        seg = video.segments[np.argsort(video.segments[:, 0])]
        assert len(seg) >= 1 and (seg[:, 0] >= 0).all() and (seg[:, 1] <= video.duration).all()
        assert (seg[:, 1] > seg[:, 0]).all() and (seg[1:, 0] >= seg[:-1, 1]).all()  # inside, ordered, disjoint
    # every class is the main class of some training video (balanced assignment)
    assert {name for v in videos if v.subset == "train" for name in v.labels} == set(world.class_names)


def test_thumos14_preset_follows_the_measured_statistics():
    """Medians of the sampled timelines are near the measured THUMOS14 values (module docstring)."""
    _, videos, _ = plan_dataset(SynthSettings.from_preset("thumos14", seed=0))
    durations = np.array([v.duration for v in videos])
    counts = np.array([len(v.labels) for v in videos])
    lengths = np.concatenate([v.segments[:, 1] - v.segments[:, 0] for v in videos])
    multi_class = np.mean([len(set(v.labels)) > 1 for v in videos])
    coverage = np.array([(v.segments[:, 1] - v.segments[:, 0]).sum() / v.duration for v in videos])
    assert 120 <= np.median(durations) <= 190  # THUMOS14: 150.5 (train) / 161.7 (test)
    assert 5 <= np.median(counts) <= 12  # 8 / 9
    assert 2.2 <= np.median(lengths) <= 4.2  # 2.9 / 3.2 s
    assert 0.07 <= multi_class <= 0.25  # 14.9 %
    assert 0.15 <= np.median(coverage) <= 0.40  # 0.25
    assert 280 <= np.mean([v.num_snippets for v in videos]) <= 400  # T: 327 / 340


def test_timeline_reproduces_the_real_instance_layout(thumos, tmp_path):
    real = load_activitynet_json(thumos / "gt.json")
    settings = SynthSettings.from_preset("small", feature_dim=8, timeline=thumos / "gt.json")
    world, videos, _ = plan_dataset(settings)
    assert world.class_names == real.class_names and len(videos) == 410
    for video in videos:
        truth = real.videos[video.video_id]
        assert video.labels == truth.labels and video.subset == truth.subset
        np.testing.assert_array_equal(video.segments, truth.segments)
        assert video.duration >= truth.segments[:, 1].max()
    # the companions measured from the annotations share their signature
    pairs = {tuple(sorted((world.class_names[a], world.class_names[b]))) for a, b in world.companions.items()}
    assert pairs == {("CliffDiving", "Diving"), ("CricketBowling", "CricketShot")}

    # a written subset: the same segments in the output's gt.json, features covering each duration
    out = tmp_path / "timeline"
    generate_dataset(out, SynthSettings.from_preset("small", feature_dim=8, num_videos=6,
                                                    timeline=thumos / "gt.json"))
    written = load_activitynet_json(out / "gt.json")
    assert len(written.videos) == 6
    assert written.class_names == sorted({name for v in written.videos.values() for name in v.labels})
    cfg = load_config("small", ["data.feature_dim=8"])
    for split in ("train", "test"):
        ds = VideoDataset.open(out, cfg, split)
        for vid in ds.video_ids:
            np.testing.assert_allclose(written.videos[vid].segments, real.videos[vid].segments)
            assert ds.num_snippets(vid) == math.ceil(round(ds.duration(vid) / SNIPPET_SECONDS, 6))


def test_timeline_from_the_wtalc_folder_keeps_real_durations(thumos):
    reduced = load_wtalc_reduced(thumos / "reduced")
    _, videos, _ = plan_dataset(SynthSettings.from_preset("small", timeline=thumos / "reduced", num_videos=20))
    for video in videos:
        truth = reduced.videos[video.video_id]
        assert video.duration == pytest.approx(max(truth.duration, truth.segments[:, 1].max()), abs=1e-3)
        assert video.fps == truth.fps
    with pytest.raises(ConfigError, match="leave --classes out"):
        plan_dataset(SynthSettings.from_preset("small", timeline=thumos / "gt.json", num_classes=5))


def snippet_classes(video, num_snippets: int, class_index: dict[str, int]) -> np.ndarray:
    """Class of each snippet whose center lies in an instance, -1 for background."""
    centers = (np.arange(num_snippets) + 0.5) * SNIPPET_SECONDS
    target = np.full(num_snippets, -1)
    for (start, end), label in zip(video.segments, video.labels, strict=True):
        target[(centers >= start) & (centers < end)] = class_index[label]
    return target


def rendered(settings: SynthSettings):
    world, videos, params = plan_dataset(settings)
    rng = np.random.default_rng(0)
    index = {name: i for i, name in enumerate(world.class_names)}
    return world, [(v, render_features(v, world, params, rng), snippet_classes(v, v.num_snippets, index))
                   for v in videos]


def test_a_linear_classifier_separates_class_evidence_from_background():
    """The small preset at its default difficulty: a ridge classifier over single snippets, fit on the train
    videos (snippet labels from the ground truth), finds actions and their classes in the test videos."""
    world, data = rendered(SynthSettings.from_preset("small"))
    num_classes = len(world.class_names)

    def stack(subset: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [(f, y) for v, f, y in data if v.subset == subset]
        x = np.concatenate([f for f, _ in parts]).astype(np.float64)
        return np.c_[x, np.ones(len(x))], np.concatenate([y for _, y in parts])

    x_train, y_train = stack("train")
    x_test, y_test = stack("test")
    weights = np.linalg.solve(x_train.T @ x_train + np.eye(x_train.shape[1]), x_train.T @ np.eye(num_classes + 1)[y_train + 1])
    scores = x_test @ weights
    action = y_test >= 0
    class_accuracy = np.mean(scores[action, 1:].argmax(1) == y_test[action])
    actionness = scores[:, 1:].max(1) - scores[:, 0]
    ranks = actionness.argsort().argsort()
    auc = (ranks[action].sum() - action.sum() * (action.sum() - 1) / 2) / (action.sum() * (~action).sum())
    assert class_accuracy > 0.9 and auc > 0.98, (class_accuracy, auc)


def evidence_contrast(difficulty: float) -> tuple[float, float]:
    """Projection of snippets on their video's class signature. Returns the leak, (context − background) /
    (inside − background), and the contrast, (inside − context) / background spread. Context = the 2 snippets
    just outside an instance."""
    world, data = rendered(SynthSettings.from_preset("small", difficulty=difficulty, num_videos=30))
    index = {name: i for i, name in enumerate(world.class_names)}
    inside, context, background = [], [], []
    for video, features, target in data:
        for c in {index[name] for name in video.labels}:
            projection = features @ world.signatures[c] / np.linalg.norm(world.signatures[c])
            own = target == c
            near = np.convolve(own, np.ones(5), mode="same") > 0
            inside.append(projection[own])
            context.append(projection[near & (target == -1)])
            background.append(projection[~near & (target == -1)])
    inside_m, context_m = np.concatenate(inside).mean(), np.concatenate(context).mean()
    far = np.concatenate(background)
    return (context_m - far.mean()) / (inside_m - far.mean()), (inside_m - context_m) / far.std()


def test_context_distractors_sit_between_background_and_action_and_difficulty_blurs_them():
    leak_easy, contrast_easy = evidence_contrast(0.0)
    leak_default, contrast_default = evidence_contrast(0.5)
    leak_hard, contrast_hard = evidence_contrast(1.0)
    # the classic trap: class evidence leaks just outside the instances, more so when harder
    assert 0.1 < leak_easy < leak_default < leak_hard < 0.6
    # and the action itself stands out less from its context
    assert contrast_easy > contrast_default > contrast_hard > 1


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="even"):
        SynthSettings.from_preset("small", feature_dim=7)
    with pytest.raises(ConfigError, match="difficulty"):
        SynthSettings.from_preset("small", difficulty=1.5)
    with pytest.raises(ConfigError, match="unknown synth preset"):
        SynthSettings.from_preset("huge")
    with pytest.raises(ConfigError, match="at least 2 videos"):
        SynthSettings.from_preset("small", num_videos=1)


def run_main(*args: str, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_writes_reports_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    args = ("synth", "-o", str(out), "--num-videos", "4", "--dim", "8", "--classes", "3", "--seed", "2")
    code, stdout, stderr = run_main(*args, capsys=capsys)
    assert code == 0, stderr
    assert f"to {out}" in stdout and "3 train + 1 test videos" in stdout
    assert (f"next: ecm-edge train --config small --data {out} --set data.feature_dim=8 "
            "--set model.num_classes=3") in stdout
    before = all_files(out)
    code, _, stderr = run_main(*args, capsys=capsys)
    assert code == 1 and "already holds a synthetic dataset; pass --force" in stderr
    code, _, stderr = run_main(*args, "--force", capsys=capsys)
    assert code == 0 and all_files(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, stderr = run_main("synth", "-o", str(tmp_path / "other"), capsys=capsys)
    assert code == 1 and "not empty" in stderr and (tmp_path / "other" / "notes.txt").exists()
    code, _, stderr = run_main("synth", "-o", str(tmp_path / "odd"), "--dim", "7", capsys=capsys)
    assert code == 1 and "even" in stderr and not (tmp_path / "odd").exists()
