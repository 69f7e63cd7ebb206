"""The procedural video generator: files that read back, exact ground truth, determinism, separable classes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from ecm_edge.cli.synth_video import synth_videos
from ecm_edge.data.annotations import load_annotations, read_split
from ecm_edge.data.synth_video import (
    ACTION_MIN_SATURATION,
    CODECS,
    SCENE_MAX_SATURATION,
    SynthVideoSpec,
    action_class_names,
    generate_video_dataset,
)
from ecm_edge.errors import DataError

SIZE = (128, 96)
FPS = 25.0
SNIPPET = 16  # frames per snippet, as the feature extractors cut them


def small_set(out: Path, seed: int = 7, num_videos: int = 8, **kwargs):
    options = dict(num_videos=num_videos, num_classes=4, seed=seed, fps=FPS, size=SIZE, duration=(9.0, 11.0),
                   instance_length=(1.5, 3.0), two_class_fraction=0.5)
    options.update(kwargs)
    return generate_video_dataset(out, **options)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_set(tmp_path_factory.mktemp("synth_videos"))


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"OpenCV cannot open {path}"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps


def test_layout_annotations_and_splits(dataset):
    root = dataset.root
    ann = load_annotations(root / "gt.json")
    assert ann.class_names == sorted(action_class_names(4))
    assert set(ann.videos) == set(dataset.videos) and len(ann.videos) == 8
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(f"{v}.avi" for v in ann.videos)
    train, test = read_split(root / "split_train.txt"), read_split(root / "split_test.txt")
    assert train and test and not set(train) & set(test) and set(train) | set(test) == set(ann.videos)
    assert all(ann.videos[v].subset == "train" for v in train)
    assert all(ann.videos[v].subset == "test" for v in test)
    assert not list(root.rglob(".*.tmp*")), "temporary files left behind"


def test_instances_lie_inside_the_video_and_do_not_overlap(dataset):
    spec = dataset.spec
    two_class_videos = 0
    for vid, video in dataset.annotations.videos.items():
        assert video.fps == FPS and video.duration == pytest.approx(round(video.duration * FPS) / FPS)
        assert spec.duration[0] - 1 / FPS <= video.duration <= spec.duration[1] + 1 / FPS
        assert len(video.labels) >= 1
        order = np.argsort(video.segments[:, 0])
        segments = video.segments[order]
        assert segments[0, 0] >= spec.min_gap - 1e-9, vid
        assert segments[-1, 1] <= video.duration - spec.min_gap + 1e-9, vid
        assert np.all(segments[1:, 0] - segments[:-1, 1] >= spec.min_gap - 1e-9), f"{vid}: instances overlap"
        lengths = segments[:, 1] - segments[:, 0]
        assert np.all(lengths >= spec.instance_length[0] - 1 / FPS), vid
        assert np.all(lengths <= spec.instance_length[1] + 1 / FPS), vid
        assert len(set(video.labels)) in (1, 2)
        two_class_videos += len(set(video.labels)) == 2
        # several instances per class are possible; bounds are frame-aligned
        assert np.allclose(video.segments * FPS, np.round(video.segments * FPS))
    assert two_class_videos >= 1


@pytest.mark.parametrize("codec", list(CODECS))
def test_video_reads_back_with_expected_frames_size_and_fps(tmp_path, codec):
    data = small_set(tmp_path, num_videos=1, duration=(6.0, 6.0), codec=codec)
    (vid, path), = data.videos.items()
    assert path.suffix == CODECS[codec][1]
    frames, fps = read_frames(path)
    assert fps == pytest.approx(FPS)
    assert len(frames) == round(data.annotations.videos[vid].duration * FPS) == 150
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert float(np.std(frames[0])) > 5.0, "the background should be textured"


def test_same_seed_same_videos_other_seed_other_videos(tmp_path):
    first, second = small_set(tmp_path / "a", num_videos=2), small_set(tmp_path / "b", num_videos=2)
    other = small_set(tmp_path / "c", num_videos=2, seed=8)
    assert (first.root / "gt.json").read_text() == (second.root / "gt.json").read_text()
    assert (first.root / "gt.json").read_text() != (other.root / "gt.json").read_text()
    for vid in first.videos:
        a, b = read_frames(first.videos[vid])[0], read_frames(second.videos[vid])[0]
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[-1], b[-1])
        assert not np.array_equal(a[0], read_frames(other.videos[vid])[0][0])


def snippet_statistics(frames: list[np.ndarray]) -> np.ndarray:
    """Per 16-frame snippet: share of saturated pixels, their mean hue direction, and how much of the saturated
    area changes from frame to frame (the motion of the coloured object, relative to its size)."""
    stats = []
    for s in range(len(frames) // SNIPPET):
        chunk = frames[s * SNIPPET:(s + 1) * SNIPPET]
        hsv = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2HSV) for f in chunk]).astype(np.float64)
        saturated = hsv[..., 1] >= (SCENE_MAX_SATURATION + ACTION_MIN_SATURATION) / 2
        angle = hsv[..., 0][saturated] * (2 * np.pi / 180)
        hue = (np.cos(angle).mean(), np.sin(angle).mean()) if angle.size else (0.0, 0.0)
        change = np.logical_xor(saturated[1:], saturated[:-1]).mean() / max(saturated.mean(), 1e-9)
        stats.append([saturated.mean(), *hue, change])
    return np.asarray(stats)


def labelled_snippets(dataset) -> tuple[np.ndarray, list[str]]:
    """Snippets entirely inside one instance get its class; snippets touching none get 'background'."""
    features, labels = [], []
    for vid, path in dataset.videos.items():
        video = dataset.annotations.videos[vid]
        stats = snippet_statistics(read_frames(path)[0])
        frames = np.round(video.segments * FPS).astype(int)
        for s, row in enumerate(stats):
            lo, hi = s * SNIPPET, (s + 1) * SNIPPET
            inside = [lab for lab, (a, b) in zip(video.labels, frames, strict=True) if a <= lo and hi <= b]
            touching = any(a < hi and lo < b for a, b in frames)
            if inside:
                labels.append(inside[0])
            elif not touching:
                labels.append("background")
            else:
                continue
            features.append(row)
    return np.asarray(features), labels


def test_classes_and_background_are_separable_by_simple_statistics(dataset):
    features, labels = labelled_snippets(dataset)
    labels = np.asarray(labels)
    names = sorted(set(labels))
    assert "background" in names and len(names) == 5, names
    background, action = features[labels == "background"], features[labels != "background"]
    # the scene is desaturated, every action carries saturated colour
    assert background[:, 0].max() < 0.002 < 0.01 < action[:, 0].min()
    # every action moves (or blinks) within each snippet: a good share of its coloured area changes per frame
    assert action[:, 3].min() > 0.15, action[:, 3].min()
    # leave-one-out nearest centroid over (saturation, hue direction, motion) labels almost every snippet right
    scaled = features / features.std(axis=0)
    correct = 0
    for i in range(len(labels)):
        mask = np.ones(len(labels), bool)
        mask[i] = False
        centroids = {n: scaled[mask & (labels == n)].mean(axis=0) for n in names}
        guess = min(centroids, key=lambda n: np.linalg.norm(scaled[i] - centroids[n]))
        correct += guess == labels[i]
    assert correct / len(labels) >= 0.95, f"{correct}/{len(labels)} snippets classified right"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_classes": 9}, "num_classes"),
    ({"duration": (3.0, 3.0)}, "cannot hold"),
    ({"size": (32, 24)}, "size"),
    ({"codec": "h265"}, "codec"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_bad_parameters_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        small_set(tmp_path, num_videos=1, **kwargs)
    assert not (tmp_path / "gt.json").exists()


def test_spec_defaults_fit_the_demo_budget():
    spec = SynthVideoSpec()
    spec.validate()
    frames = spec.num_videos * np.mean(spec.duration) * spec.fps
    assert spec.num_classes == 4 and spec.size == (160, 120) and frames <= 40 * 40 * 25


def test_cli_writes_the_set_and_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "videos_set"
    args = ["-o", str(out), "--num-videos", "2", "--classes", "2", "--size", "96x72", "--duration", "7-8",
            "--seed", "3"]
    result = CliRunner().invoke(synth_videos, args)
    assert result.exit_code == 0, result.output
    assert f"{out / 'gt.json'}" in result.output and "next:" in result.output
    ann = load_annotations(out / "gt.json")
    assert len(ann.videos) == 2 and ann.class_names == sorted(action_class_names(2))
    frames, _ = read_frames(next((out / "videos").iterdir()))
    assert frames[0].shape == (72, 96, 3)
    again = CliRunner().invoke(synth_videos, args)
    assert isinstance(again.exception, DataError) and "--force" in str(again.exception)
    stale = out / "videos" / "video_0099.avi"
    stale.write_bytes(b"left over from a larger earlier set")
    assert CliRunner().invoke(synth_videos, [*args, "--force"]).exit_code == 0
    assert not stale.exists() and len(list((out / "videos").iterdir())) == 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a video set")
    refused = CliRunner().invoke(synth_videos, ["-o", str(foreign), "--force"])
    assert isinstance(refused.exception, DataError) and (foreign / "notes.txt").exists()
    bad = CliRunner().invoke(synth_videos, ["-o", str(tmp_path / "x"), "--size", "96by72"])
    assert bad.exit_code == 2 and "96x72" not in bad.output and "160x120" in bad.output
