"""Synthetic THUMOS14-like feature datasets: the data ecm-edge ships with (``ecm-edge synth``).

A generated dataset has the layout :class:`ecm_edge.data.dataset.VideoDataset` reads (``gt.json`` with
``duration`` and ``fps`` per video, ``split_train.txt``, ``split_test.txt``,
``features/{train,test}/{rgb,flow}/<video>.npy`` of ``[T, D/2]`` each) plus ``synth.json`` with the settings. It
is a function of the settings and the seed alone: the same seed gives identical arrays and files.

Timelines
---------
Per video: duration, frame rate, classes, and action instances (start, end, class). They come either from an
annotation file (``--timeline gt.json`` reproduces THUMOS14's real instance layout; a video without a duration
lasts until its last instance plus a tail drawn from the tail distribution) or from distributions fitted to
THUMOS14's annotations (:class:`TimelineStatistics`):

- durations: log-normal, truncated to the preset's range;
- instances per video: log-linear in the duration, ``ln n = intercept + slope · ln(duration) + noise``;
- instance lengths: log-normal around a per-class mean, clipped to the observed range; the instances of a video
  cover at most ``max_coverage`` of it;
- classes per video: one main class; a share of the classes comes in companion pairs (look-alike actions that
  appear together) whose companion joins with a fixed probability, and any other second class is rare;
- time after the last instance: log-normal;
- source frame rate: drawn from the frame rates THUMOS14's videos have.

The measured values behind these constants, and the command that regenerates them, are in docs/design.md
(Decisions, Synthetic data).

Features
--------
Snippet ``t`` (0.64 s) of a video is ``relu(pre[t]) · FEATURE_SCALE`` with ``pre[t]`` the sum of

- a per-video background scene: a mix of a scene prototype tied to the video's main class (stadium, pool, ...)
  and another, plus a per-video part, with a slowly varying gain;
- class evidence: per instance, the class's signature direction (jittered per instance) plus a generic
  "actionness" direction, ramping up and down over the instance's boundaries (integrated over the snippet);
- context distractors: the class's signature at a lower amplitude just before and after each instance (the
  run-up, the replay): thresholding the class evidence naively over-extends the segments (the classic WTAL trap);
- non-action motion: bursts of generic motion plus actionness without any class signature;
- nuisance: a few shared directions with slowly varying amplitude (camera motion, lighting);
- white noise.

Everything but the noise is non-negative, and the ReLU keeps the features so (I3D features are post-ReLU).
``difficulty`` (0..1) scales noise, context, non-action motion, nuisance, the overlap between class signatures
and how strongly the scene predicts the class. Single snippets stay separable by class, while the class evidence
that leaks just outside the instances grows with the difficulty: that leak, not the snippet classification, is
what weak supervision has to overcome. ``tests/data/test_synth.py`` checks both properties; the measured figures
are in docs/design.md (Decisions, Synthetic data).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecm_edge.data.annotations import Annotations, VideoAnnotation, load_annotations
from ecm_edge.errors import ConfigError, DataError
from ecm_edge.io import atomic_path, atomic_write_json, atomic_write_text
from ecm_edge.version import __version__

logger = logging.getLogger("ecm_edge")

SNIPPET_SECONDS = 16 / 25  # one snippet = 16 frames at 25 fps
MODALITIES = ("rgb", "flow")  # the two halves of the D channels, written as separate files
SUBSAMPLES_PER_SNIPPET = 4  # time points per snippet at which evidence profiles are averaged
FEATURE_SCALE = 0.5  # global scale: features average about 1 per channel at the default difficulty


@dataclass(frozen=True)
class TimelineStatistics:
    """THUMOS14's timeline statistics that the sampler draws from (measured on its annotations; the figures and
    the command that regenerates them are in docs/design.md, Decisions, Synthetic data)."""

    log_duration_mean: float = 4.979
    log_duration_std: float = 0.880
    duration_range: tuple[float, float] = (8.9, 1673.4)
    instances_intercept: float = -2.155  # ln n = intercept + slope · ln(duration) + N(0, residual²)
    instances_slope: float = 0.854
    instances_residual_std: float = 0.885
    class_log_length_mean: float = 1.149  # mean over classes of the class's mean ln(length / s)
    class_log_length_spread: float = 0.586  # std over classes of that mean
    log_length_std: float = 0.615  # std of ln(length) within a class
    length_range: tuple[float, float] = (0.2, 118.1)
    max_coverage: float = 0.95  # cap on instance time / duration
    paired_class_share: float = 0.2  # share of classes that have a companion class
    companion_probability: float = 0.6  # P(companion in the video | main class is paired)
    extra_class_probability: float = 0.02  # P(an unrelated second class)
    log_tail_mean: float = 2.423  # ln(seconds after the last instance)
    log_tail_std: float = 1.343
    fps_values: tuple[float, ...] = (30.0, 25.0, 24.0)
    fps_weights: tuple[float, ...] = (397 / 410, 11 / 410, 2 / 410)


THUMOS14_STATISTICS = TimelineStatistics()


@dataclass(frozen=True)
class Preset:
    name: str
    num_train: int
    num_test: int
    num_classes: int
    feature_dim: int
    duration_range: tuple[float, float]  # seconds; the THUMOS14 duration distribution is truncated to it
    difficulty: float
    config: str  # the shipped config that trains on it
    description: str


PRESETS: dict[str, Preset] = {
    "small": Preset("small", 40, 20, 20, 256, (30.0, 120.0), 0.5, "small",
                    "tests and the demo: 60 short videos (T ≈ 50–190 snippets), D = 256"),
    "thumos14": Preset("thumos14", 200, 210, 20, 2048, THUMOS14_STATISTICS.duration_range, 0.5, "thumos14",
                       "THUMOS14's size: 200 train + 210 test videos of its durations, D = 2048 (≈ 1 GB)"),
}


@dataclass(frozen=True)
class FeatureParams:
    """Amplitudes of the feature components (in units of a unit-RMS signature), derived from ``difficulty``."""

    noise_std: float
    context_level: float  # amplitude of the class evidence just outside instances, relative to inside
    distractor_rate_per_min: float  # non-action motion bursts per minute of video
    distractor_level: float
    class_overlap: float  # share of every class signature that is common to all classes
    nuisance_level: float
    scene_class_coupling: float  # weight of the class-tied scene prototype in a video's scene
    evidence_level: float = 2.0  # amplitude of the class evidence at the core of an instance
    instance_jitter: float = 0.3  # per-instance multiplicative variation of the signature
    actionness_level: float = 0.5  # generic actionness added to every instance and motion burst
    scene_level: float = 1.0

    @classmethod
    def from_difficulty(cls, difficulty: float) -> FeatureParams:
        d = float(difficulty)
        return cls(noise_std=round(0.3 + 0.9 * d, 4), context_level=round(0.05 + 0.4 * d, 4),
                   distractor_rate_per_min=round(0.5 + 3.0 * d, 4), distractor_level=round(0.5 + 0.5 * d, 4),
                   class_overlap=round(0.1 + 0.4 * d, 4), nuisance_level=round(0.2 + 0.6 * d, 4),
                   scene_class_coupling=round(0.3 + 0.5 * d, 4))


@dataclass
class SynthSettings:
    """Everything the generator output depends on."""

    preset: str = "small"
    seed: int = 0
    num_classes: int = 20
    feature_dim: int = 256
    difficulty: float = 0.5
    num_train: int | None = 40  # None with a timeline: all of its train videos
    num_test: int | None = 20
    duration_range: tuple[float, float] = (30.0, 120.0)
    timeline: str | None = None  # annotation file (or W-TALC folder) whose timelines are reproduced

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, num_classes: int | None = None, feature_dim: int | None = None,
                    difficulty: float | None = None, num_videos: int | None = None,
                    timeline: str | Path | None = None) -> SynthSettings:
        """The preset's settings with the given overrides (``num_videos`` keeps the preset's train/test ratio)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown synth preset {name!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[name]
        num_train: int | None = preset.num_train
        num_test: int | None = preset.num_test
        if timeline is not None:
            num_train = num_test = None
        if num_videos is not None:
            num_train, num_test = split_count(num_videos, preset.num_train / (preset.num_train + preset.num_test))
        settings = cls(name, seed, num_classes or preset.num_classes, feature_dim or preset.feature_dim,
                       preset.difficulty if difficulty is None else difficulty, num_train, num_test,
                       preset.duration_range, None if timeline is None else str(timeline))
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.feature_dim < 2 or self.feature_dim % 2:
            raise ConfigError(f"feature dimension must be even and at least 2 (split into {' and '.join(MODALITIES)}"
                              f" halves), got {self.feature_dim}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ConfigError(f"difficulty must be between 0 and 1, got {self.difficulty}")
        if self.num_classes < 1:
            raise ConfigError(f"number of classes must be at least 1, got {self.num_classes}")
        if (self.num_train is None) != (self.num_test is None):
            raise ConfigError("give both the train and the test video counts, or neither (with a timeline)")
        if self.num_train is None and self.timeline is None:
            raise ConfigError("video counts may only be left out with a timeline")
        if self.num_train is not None and (self.num_train < 1 or self.num_test < 1):
            raise ConfigError(f"need at least one train and one test video, got {self.num_train} + {self.num_test}")
        low, high = self.duration_range
        if not 0 < low <= high:
            raise ConfigError(f"duration range must satisfy 0 < min <= max, got {self.duration_range}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SyntheticVideo:
    """One video's timeline."""

    video_id: str
    subset: str  # "train" | "test"
    duration: float  # seconds
    fps: float
    segments: np.ndarray  # [N, 2] seconds
    labels: list[str]

    @property
    def num_snippets(self) -> int:
        return snippets_for_duration(self.duration)

    def annotation(self) -> VideoAnnotation:
        return VideoAnnotation(self.video_id, self.subset, self.segments, list(self.labels), self.duration, self.fps)


@dataclass
class FeatureWorld:
    """The directions shared by all videos of a dataset (seeded once)."""

    class_names: list[str]
    signatures: np.ndarray  # [C, D] unit-RMS, non-negative
    actionness: np.ndarray  # [D]
    scenes: np.ndarray  # [S, D]
    class_scene: np.ndarray  # [C] index of each class's scene prototype
    motions: np.ndarray  # [M, D] non-action motion directions
    nuisances: np.ndarray  # [J, D]
    class_log_length: np.ndarray  # [C] mean ln(instance length) per class
    companions: dict[int, int] = field(default_factory=dict)  # class -> its companion class


@dataclass
class SynthReport:
    output: Path
    settings: SynthSettings
    num_train: int
    num_test: int
    num_instances: int
    num_snippets: int
    bytes_written: int
    seconds: float
    class_names: list[str] = field(default_factory=list)  # the classes that occur (gt.json's class list)


def split_count(total: int, train_share: float) -> tuple[int, int]:
    """``total`` videos as (train, test) with the given train share, both at least one."""
    if total < 2:
        raise ConfigError(f"need at least 2 videos (one train, one test), got {total}")
    train = min(total - 1, max(1, round(total * train_share)))
    return train, total - train


def snippets_for_duration(duration: float) -> int:
    """T of a video: enough 0.64 s snippets to cover its duration (at least one)."""
    return max(1, math.ceil(round(duration / SNIPPET_SECONDS, 6)))


def class_names_for(count: int) -> list[str]:
    """Synthetic class names whose sorted order is their index order."""
    width = max(2, len(str(count - 1)))
    return [f"action{i:0{width}d}" for i in range(count)]


# -- the shared directions -------------------------------------------------------------------------------------

def _unit_rms(vectors: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(vectors.astype(np.float64) ** 2, axis=-1, keepdims=True))
    return (vectors / np.maximum(rms, 1e-12)).astype(np.float32)


def _sparse_positive(rng: np.random.Generator, count: int, dim: int, density: float) -> np.ndarray:
    """``count`` non-negative unit-RMS vectors with about ``density`` of the channels active."""
    active = rng.random((count, dim)) < density
    active[np.arange(count), rng.integers(0, dim, count)] = True  # never all-zero, even for tiny D
    return _unit_rms(active * rng.gamma(2.0, 1.0, (count, dim)))


def pair_classes(rng: np.random.Generator, num_classes: int, share: float) -> dict[int, int]:
    """Companion pairs among ``share`` of the classes (both directions in the returned map)."""
    num_pairs = round(num_classes * share / 2)
    chosen = rng.permutation(num_classes)[: 2 * num_pairs]
    pairs = {}
    for a, b in zip(chosen[0::2], chosen[1::2], strict=True):
        pairs[int(a)], pairs[int(b)] = int(b), int(a)
    return pairs


def companions_from_annotations(ann: Annotations, min_share: float = 0.5) -> dict[int, int]:
    """Classes that co-occur in at least ``min_share`` of the rarer one's videos, paired greedily."""
    index = ann.class_index
    count = np.zeros(len(index))
    both = np.zeros((len(index), len(index)))
    for video in ann.videos.values():
        ids = sorted(index[c] for c in video.classes)
        count[ids] += 1
        for i in ids:
            for j in ids:
                both[i, j] += i != j
    share = both / np.maximum(np.minimum.outer(count, count), 1)
    pairs: dict[int, int] = {}
    for flat in np.argsort(-share, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(index))
        if share[i, j] < min_share:
            break
        if i not in pairs and j not in pairs and i != j:
            pairs[i], pairs[j] = j, i
    return pairs


def build_world(class_names: list[str], feature_dim: int, params: FeatureParams, rng: np.random.Generator,
                companions: dict[int, int], stats: TimelineStatistics = THUMOS14_STATISTICS) -> FeatureWorld:
    """Class signatures, actionness, scene prototypes, motion and nuisance directions."""
    num_classes = len(class_names)
    shared = _sparse_positive(rng, 1, feature_dim, 0.3)
    unique = _sparse_positive(rng, num_classes, feature_dim, 0.15)
    signatures = _unit_rms((1 - params.class_overlap) * unique + params.class_overlap * shared)
    for a, b in companions.items():
        if a < b:  # companions look alike (Diving / CliffDiving): they share half their signature
            common = _sparse_positive(rng, 1, feature_dim, 0.15)[0]
            signatures[a] = _unit_rms(0.5 * signatures[a] + 0.5 * common)
            signatures[b] = _unit_rms(0.5 * signatures[b] + 0.5 * common)
    num_scenes = max(2, num_classes // 2)
    class_scene = rng.integers(0, num_scenes, num_classes)
    for a, b in companions.items():
        class_scene[b if a < b else a] = class_scene[min(a, b)]
    class_log_length = rng.normal(stats.class_log_length_mean, stats.class_log_length_spread, num_classes)
    return FeatureWorld(
        class_names=list(class_names),
        signatures=signatures,
        actionness=_sparse_positive(rng, 1, feature_dim, 0.2)[0],
        scenes=_sparse_positive(rng, num_scenes, feature_dim, 0.5),
        class_scene=class_scene,
        motions=_sparse_positive(rng, 4, feature_dim, 0.15),
        nuisances=_sparse_positive(rng, 6, feature_dim, 0.3),
        companions=dict(companions),
        class_log_length=class_log_length,
    )


# -- timelines -----------------------------------------------------------------------------------------------------

def _truncated_lognormal(rng: np.random.Generator, mean: float, std: float, low: float, high: float) -> float:
    for _ in range(1000):
        value = float(np.exp(rng.normal(mean, std)))
        if low <= value <= high:
            return value
    return float(rng.uniform(low, high))  # the range lies far in a tail: fall back to uniform


def _video_classes(rng: np.random.Generator, main: int, world: FeatureWorld, stats: TimelineStatistics) -> list[int]:
    classes = [main]
    companion = world.companions.get(main)
    if companion is not None and rng.random() < stats.companion_probability:
        classes.append(companion)
    num_classes = len(world.class_names)
    if num_classes > len(classes) and rng.random() < stats.extra_class_probability:
        others = [c for c in range(num_classes) if c not in classes]
        classes.append(int(rng.choice(others)))
    return classes


def sample_video(video_id: str, subset: str, main_class: int, world: FeatureWorld, settings: SynthSettings,
                 rng: np.random.Generator, stats: TimelineStatistics = THUMOS14_STATISTICS) -> SyntheticVideo:
    """One timeline drawn from the THUMOS14 distributions (durations truncated to the preset's range)."""
    low, high = settings.duration_range
    duration = round(_truncated_lognormal(rng, stats.log_duration_mean, stats.log_duration_std, low, high), 3)
    fps = float(rng.choice(stats.fps_values, p=np.asarray(stats.fps_weights) / sum(stats.fps_weights)))
    classes = _video_classes(rng, main_class, world, stats)
    log_count = stats.instances_intercept + stats.instances_slope * math.log(duration)
    count = max(len(classes), round(math.exp(rng.normal(log_count, stats.instances_residual_std))))
    labels = classes + [int(c) for c in rng.choice(classes, count - len(classes))]
    labels = [labels[i] for i in rng.permutation(count)]
    lengths = np.exp(rng.normal(world.class_log_length[labels], stats.log_length_std))
    lengths = np.clip(lengths, *stats.length_range)
    labels, lengths = _fit_coverage(labels, lengths, duration * stats.max_coverage, stats.length_range[0])
    gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * (duration - lengths.sum())
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    segments = np.round(np.stack([starts, starts + lengths], axis=1), 2)
    segments[:, 1] = np.minimum(np.maximum(segments[:, 1], segments[:, 0] + 0.01), duration)
    names = [world.class_names[c] for c in labels]
    return SyntheticVideo(video_id, subset, duration, fps, segments, names)


def _fit_coverage(labels: list[int], lengths: np.ndarray, budget: float,
                  min_length: float) -> tuple[list[int], np.ndarray]:
    """Drop instances (keeping every class) and then shrink them until their total length fits ``budget``."""
    labels, lengths = list(labels), lengths.copy()
    while lengths.sum() > budget and len(labels) > len(set(labels)):
        for i in range(len(labels) - 1, -1, -1):
            if labels.count(labels[i]) > 1:
                del labels[i]
                lengths = np.delete(lengths, i)
                break
    if lengths.sum() > budget:
        lengths = np.maximum(lengths * budget / lengths.sum(), min(min_length, budget / len(lengths)))
    return labels, lengths


def sample_timelines(world: FeatureWorld, settings: SynthSettings, rng: np.random.Generator,
                     stats: TimelineStatistics = THUMOS14_STATISTICS) -> list[SyntheticVideo]:
    """Train then test videos; main classes are balanced (each class equally often, up to one)."""
    videos = []
    num_classes = len(world.class_names)
    for subset, count in (("train", settings.num_train), ("test", settings.num_test)):
        mains = rng.permutation(np.resize(rng.permutation(num_classes), count))
        for i, main in enumerate(mains):
            videos.append(sample_video(f"video_{subset}_{i + 1:04d}", subset, int(main), world, settings, rng, stats))
    return videos


def timelines_from_annotations(ann: Annotations, settings: SynthSettings, rng: np.random.Generator,
                               stats: TimelineStatistics = THUMOS14_STATISTICS) -> list[SyntheticVideo]:
    """The annotated videos' real timelines (ids, subsets, segments, labels), train then test.

    Videos without instances, or of another subset than train/validation/test, are skipped. A missing duration
    becomes the last instance's end plus a tail from the measured distribution; a missing fps is drawn. A
    duration shorter than the last instance's end (annotation errors exist) is extended to it.
    ``settings.num_train`` / ``num_test`` pick that many videos of each subset at random (seeded).
    """
    by_subset: dict[str, list[VideoAnnotation]] = {"train": [], "test": []}
    for vid in sorted(ann.videos):
        video = ann.videos[vid]
        subset = {"train": "train", "training": "train", "validation": "train",
                  "test": "test", "testing": "test"}.get(video.subset)
        if subset is not None and len(video.labels):
            by_subset[subset].append(video)
    videos = []
    fps_p = np.asarray(stats.fps_weights) / sum(stats.fps_weights)
    for subset, wanted in (("train", settings.num_train), ("test", settings.num_test)):
        pool = by_subset[subset]
        if not pool:
            raise DataError(f"timeline {settings.timeline}: no annotated {subset} video with instances")
        if wanted is not None and wanted < len(pool):
            keep = np.sort(rng.choice(len(pool), wanted, replace=False))
            pool = [pool[i] for i in keep]
        for video in pool:
            last_end = float(video.segments[:, 1].max())
            tail = float(np.exp(rng.normal(stats.log_tail_mean, stats.log_tail_std)))
            duration = video.duration if video.duration else last_end + min(tail, stats.duration_range[1])
            fps = video.fps if video.fps else float(rng.choice(stats.fps_values, p=fps_p))
            videos.append(SyntheticVideo(video.video_id, subset, round(max(duration, last_end), 3), float(fps),
                                         video.segments.copy(), list(video.labels)))
    return videos


# -- features ------------------------------------------------------------------------------------------------------

def _snippet_times(num_snippets: int) -> np.ndarray:
    """[T · SUBSAMPLES] time points inside the snippets, at which profiles are evaluated and then averaged."""
    offsets = (np.arange(SUBSAMPLES_PER_SNIPPET) + 0.5) / SUBSAMPLES_PER_SNIPPET
    return ((np.arange(num_snippets)[:, None] + offsets) * SNIPPET_SECONDS).reshape(-1)


def ramp_profiles(starts: np.ndarray, ends: np.ndarray, ramps: np.ndarray, num_snippets: int) -> np.ndarray:
    """[N, T] snippet-averaged trapezoids: 0.5 at each boundary, 1 at ``ramp/2`` inside, 0 at ``ramp/2`` outside."""
    if len(starts) == 0:
        return np.zeros((0, num_snippets), dtype=np.float32)
    t = _snippet_times(num_snippets)[None, :]
    inside = np.minimum(t - starts[:, None], ends[:, None] - t)
    values = np.clip(inside / ramps[:, None] + 0.5, 0.0, 1.0)
    return values.reshape(len(starts), num_snippets, SUBSAMPLES_PER_SNIPPET).mean(axis=2).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, rows: int, length: int, memory: float = 0.9) -> np.ndarray:
    """[rows, length] unit-variance noise with an exponential autocorrelation (``memory`` per snippet)."""
    taps = memory ** np.arange(math.ceil(math.log(0.01) / math.log(memory)))
    taps /= np.sqrt(np.sum(taps**2))
    white = rng.standard_normal((rows, length + len(taps) - 1))
    return np.stack([np.convolve(w, taps, mode="valid") for w in white]).astype(np.float32)


def render_features(video: SyntheticVideo, world: FeatureWorld, params: FeatureParams,
                    rng: np.random.Generator) -> np.ndarray:
    """The ``[T, D]`` float32 non-negative features of one video's timeline."""
    num_snippets = video.num_snippets
    dim = world.signatures.shape[1]
    index = {name: i for i, name in enumerate(world.class_names)}
    labels = np.array([index[name] for name in video.labels], dtype=np.int64)
    starts, ends = video.segments[:, 0], video.segments[:, 1]
    lengths = np.maximum(ends - starts, 1e-3)
    rows: list[np.ndarray] = []  # directions [K, D]
    profiles: list[np.ndarray] = []  # their amplitudes over time [K, T]

    # class evidence: per-instance jittered signature + actionness, ramping at the boundaries
    ramps = np.clip(0.3 * lengths, 0.3, 1.5)
    inside = ramp_profiles(starts, ends, ramps, num_snippets)
    amplitude = params.evidence_level * rng.uniform(0.7, 1.3, len(labels)).astype(np.float32)
    jitter = np.clip(1 + params.instance_jitter * rng.standard_normal((len(labels), dim)), 0, None)
    rows.append(_unit_rms(world.signatures[labels] * jitter))
    profiles.append(inside * amplitude[:, None])
    rows.append(world.actionness[None])
    profiles.append(params.actionness_level * inside.max(axis=0, initial=0.0)[None])

    # context distractors: the class's evidence, weaker, just outside each instance
    before = np.clip(lengths * rng.uniform(0.3, 1.0, len(labels)), SNIPPET_SECONDS, 8.0)
    after = np.clip(lengths * rng.uniform(0.3, 1.0, len(labels)), SNIPPET_SECONDS, 8.0)
    around = ramp_profiles(starts - before, ends + after, ramps, num_snippets)
    context = np.clip(around - inside, 0.0, None) * rng.uniform(0.6, 1.2, len(labels)).astype(np.float32)[:, None]
    present = np.unique(labels)
    per_class = np.stack([context[labels == c].sum(axis=0) for c in present]) if len(present) else context
    rows.append(world.signatures[present])
    profiles.append(params.evidence_level * params.context_level * np.minimum(per_class, 1.2))

    # non-action motion bursts
    bursts = rng.poisson(params.distractor_rate_per_min * video.duration / 60.0)
    if bursts:
        centers = rng.uniform(0, video.duration, bursts)
        spans = np.clip(np.exp(rng.normal(1.1, 0.8, bursts)), 0.3, 20.0)
        motion = ramp_profiles(centers - spans / 2, centers + spans / 2, np.clip(0.3 * spans, 0.3, 1.5), num_snippets)
        kinds = rng.integers(0, len(world.motions), bursts)
        rows.append(_unit_rms(world.motions[kinds] + params.actionness_level * world.actionness))
        profiles.append(params.distractor_level * rng.uniform(0.6, 1.2, bursts).astype(np.float32)[:, None] * motion)

    # nuisance directions with slowly varying amplitude
    rows.append(world.nuisances)
    profiles.append(params.nuisance_level * np.abs(_smooth_noise(rng, len(world.nuisances), num_snippets)))

    features = np.concatenate(profiles, axis=0).T.astype(np.float32) @ np.concatenate(rows, axis=0)
    features += np.outer(_scene_gain(rng, num_snippets), _video_scene(video, labels, world, params, rng))
    features += params.noise_std * rng.standard_normal((num_snippets, dim), dtype=np.float32)
    np.maximum(features, 0.0, out=features)
    features *= FEATURE_SCALE
    return features


def _video_scene(video: SyntheticVideo, labels: np.ndarray, world: FeatureWorld, params: FeatureParams,
                 rng: np.random.Generator) -> np.ndarray:
    """The video's background: its main class's scene prototype, another one, and a part of its own."""
    main = int(np.bincount(labels).argmax()) if len(labels) else int(rng.integers(len(world.class_names)))
    tied = world.scenes[world.class_scene[main]]
    other = world.scenes[rng.integers(len(world.scenes))]
    own = _sparse_positive(rng, 1, world.scenes.shape[1], 0.5)[0]
    coupling = params.scene_class_coupling
    scene = _unit_rms(coupling * tied + (1 - coupling) * (0.5 * other + 0.5 * own))
    return params.scene_level * rng.uniform(0.7, 1.3) * scene


def _scene_gain(rng: np.random.Generator, num_snippets: int) -> np.ndarray:
    return (1.0 + 0.15 * _smooth_noise(rng, 1, num_snippets, memory=0.97)[0]).astype(np.float32)


# -- writing a dataset -----------------------------------------------------------------------------------------------

def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    """Independent, reproducible random streams: 0 the world, 1 the timelines, 2 the videos' features."""
    return np.random.default_rng([seed, stream, *index])


def plan_dataset(settings: SynthSettings) -> tuple[FeatureWorld, list[SyntheticVideo], FeatureParams]:
    """The world and the timelines of a dataset (no features yet)."""
    settings.validate()
    params = FeatureParams.from_difficulty(settings.difficulty)
    if settings.timeline is not None:
        ann = load_annotations(settings.timeline)
        if settings.num_classes != len(ann.class_names):
            raise ConfigError(f"timeline {settings.timeline} has {len(ann.class_names)} classes, but "
                              f"{settings.num_classes} were asked for; leave --classes out with --timeline")
        world = build_world(ann.class_names, settings.feature_dim, params, _rng(settings.seed, 0),
                            companions_from_annotations(ann))
        videos = timelines_from_annotations(ann, settings, _rng(settings.seed, 1))
    else:
        names = class_names_for(settings.num_classes)
        world_rng = _rng(settings.seed, 0)
        companions = pair_classes(world_rng, settings.num_classes, THUMOS14_STATISTICS.paired_class_share)
        world = build_world(names, settings.feature_dim, params, world_rng, companions)
        videos = sample_timelines(world, settings, _rng(settings.seed, 1))
    return world, videos, params


def generate_dataset(output: str | Path, settings: SynthSettings,
                     progress: Callable[[SyntheticVideo], None] | None = None) -> SynthReport:
    """Write a synthetic dataset to ``output`` (features first, then annotations, splits and ``synth.json``).

    Every file is written atomically; the annotation files come last, so an interrupted run never leaves a
    folder that looks complete. ``progress`` is called after each video.
    """
    output = Path(output)
    began = time.perf_counter()
    world, videos, params = plan_dataset(settings)
    half = settings.feature_dim // 2
    written = 0
    for i, video in enumerate(videos):
        features = render_features(video, world, params, _rng(settings.seed, 2, i))
        for m, modality in enumerate(MODALITIES):
            path = output / "features" / video.subset / modality / f"{video.video_id}.npy"
            with atomic_path(path) as tmp:
                np.save(tmp, np.ascontiguousarray(features[:, m * half:(m + 1) * half]))
            written += path.stat().st_size
        if progress is not None:
            progress(video)
    annotations = Annotations({v.video_id: v.annotation() for v in videos}, list(world.class_names))
    written += annotations.save_json(output / "gt.json").stat().st_size
    for subset in ("train", "test"):
        ids = "".join(f"{v.video_id}\n" for v in videos if v.subset == subset)
        written += atomic_write_text(output / f"split_{subset}.txt", ids).stat().st_size
    written += atomic_write_json(output / "synth.json", describe(settings, world, params, videos)).stat().st_size
    report = SynthReport(output, settings, sum(v.subset == "train" for v in videos),
                         sum(v.subset == "test" for v in videos), sum(len(v.labels) for v in videos),
                         sum(v.num_snippets for v in videos), written, time.perf_counter() - began,
                         sorted({name for v in videos for name in v.labels}))
    logger.debug("synth wrote %d videos to %s in %.1f s", len(videos), output, report.seconds)
    return report


def describe(settings: SynthSettings, world: FeatureWorld, params: FeatureParams,
             videos: list[SyntheticVideo]) -> dict:
    """The content of ``synth.json``: what generated the dataset, and how to regenerate it."""
    return {
        "generator": "ecm-edge synth",
        "ecm_edge_version": __version__,
        "settings": settings.to_dict(),
        "feature_params": dataclasses.asdict(params),
        "feature_scale": FEATURE_SCALE,
        "snippet_seconds": SNIPPET_SECONDS,
        "modalities": list(MODALITIES),
        "class_names": list(world.class_names),
        "companion_classes": sorted([world.class_names[a], world.class_names[b]]
                                    for a, b in world.companions.items() if a < b),
        "videos": {"train": sum(v.subset == "train" for v in videos), "test": sum(v.subset == "test" for v in videos)},
        "instances": sum(len(v.labels) for v in videos),
        "snippets": sum(v.num_snippets for v in videos),
    }
