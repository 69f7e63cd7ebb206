"""Procedural action videos: real video files with exact temporal ground truth, deterministic by seed.

The end-to-end demo needs raw video (frames → tiny backbone → features → ECM → segments), small and cheap enough
to generate, extract and train on a 2-core CPU in minutes. Each video is a scene with a textured, slowly panning
and slowly relit background, a jittering camera, distractor objects that move but are not actions, and one or
two action classes, each with several instances of random start and length.

The action classes differ in both appearance and motion so that a small colour/motion extractor can tell them
apart: every class has its own saturated hue and its own movement (bouncing, spinning, sliding, flashing, ...);
the background and the distractors are kept desaturated. Instances never overlap in time, and their bounds are
frame-aligned, so the annotation is exactly what was rendered.

Output layout of :func:`generate_video_dataset`::

    out_dir/
      videos/<vid>.avi     (or .mp4)
      gt.json              ActivityNet style: subset, duration, fps, annotations
      split_train.txt      one video id per line
      split_test.txt
      synth_videos.json    the generation parameters (for reproduction)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ecm_edge.data.annotations import Annotations, VideoAnnotation
from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.io import atomic_path, atomic_write_json, atomic_write_text

logger = logging.getLogger("ecm_edge")

# codec name -> (OpenCV fourcc, file extension). MJPG is intra-only: exact frame counts and seeking, and
# bit-identical output for identical input, which the determinism guarantee relies on.
CODECS: dict[str, tuple[str, str]] = {"mjpg": ("MJPG", ".avi"), "mp4v": ("mp4v", ".mp4")}

# Saturation (OpenCV HSV, 0–255) ceilings and floors that keep scene and actions apart in colour.
SCENE_MAX_SATURATION = 70  # background texture and distractors stay at or below this
ACTION_MIN_SATURATION = 200  # action objects are drawn at or above this
MANIFEST_NAME = "synth_videos.json"  # the generation parameters, beside gt.json


@dataclass(frozen=True)
class SynthVideoSpec:
    """Every tunable of the generator, with its unit."""

    num_videos: int = 40
    num_classes: int = 4  # K action classes, taken in order from ACTION_STYLES (at most len(ACTION_STYLES))
    seed: int = 0
    fps: float = 25.0  # frames per second of the written videos
    size: tuple[int, int] = (160, 120)  # (width, height) in pixels
    duration: tuple[float, float] = (20.0, 40.0)  # video length range, seconds
    instance_length: tuple[float, float] = (2.0, 6.0)  # action instance length range, seconds
    instances_per_class: tuple[int, int] = (1, 3)  # instances of each class present in a video (inclusive)
    two_class_fraction: float = 0.3  # share of videos that contain a second action class
    test_fraction: float = 0.25  # share of each class's videos in the test subset
    min_gap: float = 1.0  # seconds of no action before, between and after instances
    max_action_fraction: float = 0.6  # instances cover at most this share of a video
    jitter_px: int = 2  # camera jitter amplitude, pixels
    pan_fraction: float = 0.1  # background pan amplitude as a share of the frame size
    distractors: tuple[int, int] = (1, 3)  # distractor objects per video (inclusive range)
    codec: str = "mjpg"  # key of CODECS

    def validate(self) -> None:
        """Raise a :class:`DataError` naming the first parameter that cannot work."""
        width, height = self.size
        checks = [
            (self.num_videos >= 1, f"num_videos must be at least 1, got {self.num_videos}"),
            (1 <= self.num_classes <= len(ACTION_STYLES),
             f"num_classes must be 1..{len(ACTION_STYLES)} (the built-in action styles), got {self.num_classes}"),
            (self.fps > 0, f"fps must be positive, got {self.fps}"),
            (width >= 64 and height >= 48, f"size must be at least 64x48 pixels, got {width}x{height}"),
            (0 < self.duration[0] <= self.duration[1], f"duration range must be 0 < min <= max, got {self.duration}"),
            (0 < self.instance_length[0] <= self.instance_length[1],
             f"instance_length range must be 0 < min <= max, got {self.instance_length}"),
            (1 <= self.instances_per_class[0] <= self.instances_per_class[1],
             f"instances_per_class must be 1 <= min <= max, got {self.instances_per_class}"),
            (0.0 <= self.two_class_fraction <= 1.0, "two_class_fraction must be in [0, 1]"),
            (0.0 <= self.test_fraction < 1.0, "test_fraction must be in [0, 1)"),
            (0.0 < self.max_action_fraction <= 1.0, "max_action_fraction must be in (0, 1]"),
            (self.codec in CODECS, f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"video generator: {message}")
        needed = 2 * self.instance_length[0] + 3 * self.min_gap
        if self.duration[0] * self.max_action_fraction < 2 * self.instance_length[0] or self.duration[0] < needed:
            raise DataError(f"video generator: videos of {self.duration[0]} s cannot hold two instances of "
                            f"{self.instance_length[0]} s with {self.min_gap} s gaps; raise the duration or "
                            "shorten the instances")


@dataclass(frozen=True)
class ActionInstance:
    """One rendered action: frames ``[start_frame, end_frame)`` and how it looks there."""

    label: str
    start_frame: int
    end_frame: int  # exclusive
    anchor: tuple[float, float]  # centre of the motion, pixels
    scale: float  # size multiplier around the class's base size
    speed: float  # tempo multiplier around the class's base tempo
    phase: float  # start phase of the motion, in cycles
    color: tuple[int, int, int]  # BGR


@dataclass(frozen=True)
class Distractor:
    """A desaturated object that drifts across the scene and is not an action."""

    kind: str  # "blob" (always present, slow) or "passer" (crosses the frame once, faster)
    start: tuple[float, float]  # pixels at its first frame
    velocity: tuple[float, float]  # pixels per second
    radius: float  # pixels
    color: tuple[int, int, int]  # BGR
    first_frame: int
    last_frame: int  # exclusive


@dataclass
class VideoPlan:
    """Everything needed to render one video, drawn from its own random stream."""

    video_id: str
    subset: str
    num_frames: int
    fps: float
    size: tuple[int, int]
    instances: list[ActionInstance]
    distractors: list[Distractor]
    seed: tuple[int, int]  # (dataset seed, video index): the video's random stream

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def annotation(self) -> VideoAnnotation:
        segments = np.array([[i.start_frame / self.fps, i.end_frame / self.fps] for i in self.instances],
                            dtype=np.float64).reshape(-1, 2)
        return VideoAnnotation(self.video_id, self.subset, segments, [i.label for i in self.instances],
                               duration=self.duration, fps=self.fps)


@dataclass
class SynthVideoDataset:
    """What :func:`generate_video_dataset` wrote."""

    root: Path
    annotations: Annotations
    videos: dict[str, Path]  # video id -> file
    class_names: list[str]
    spec: SynthVideoSpec
    train_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)


# --- action styles: appearance + motion per class ---------------------------------------------------------

@dataclass(frozen=True)
class ActionStyle:
    name: str
    hue: int  # OpenCV hue, 0–179
    anchor_x: tuple[float, float]  # anchor range as a share of the width (keeps the motion inside the frame)
    anchor_y: tuple[float, float]  # ... and of the height
    draw: Callable[[np.ndarray, ActionInstance, float, float], None]  # (canvas, instance, seconds in, unit px)


ACTION_STYLES: dict[str, ActionStyle] = {}


def _action_style(name: str, hue: int, anchor_x: tuple[float, float], anchor_y: tuple[float, float]):
    def register(draw: Callable[[np.ndarray, ActionInstance, float, float], None]):
        ACTION_STYLES[name] = ActionStyle(name, hue, anchor_x, anchor_y, draw)
        return draw

    return register


def _cycles(inst: ActionInstance, seconds: float, hz: float) -> float:
    return inst.phase + inst.speed * hz * seconds


def _triangle(cycles: float) -> float:
    """A triangle wave in [-1, 1]: constant-speed back-and-forth motion."""
    return 4.0 * abs(cycles % 1.0 - 0.5) - 1.0


def _point(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


# Order matters: the first K styles are the classes of a K-class dataset, so the default four are the most
# different in hue (red, green, blue, yellow) and motion.

@_action_style("Bounce", hue=0, anchor_x=(0.2, 0.8), anchor_y=(0.78, 0.84))
def _draw_bounce(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A ball bouncing on the floor: parabolic arcs, 1.2 bounces per second."""
    radius = unit * inst.scale
    height = canvas.shape[0] * 0.42
    arc = _cycles(inst, t, 1.2) % 1.0
    lift = 4.0 * arc * (1.0 - arc)
    cv2.circle(canvas, _point(inst.anchor[0], inst.anchor[1] - lift * height), round(radius), inst.color, -1,
               cv2.LINE_AA)


@_action_style("Spin", hue=60, anchor_x=(0.25, 0.75), anchor_y=(0.3, 0.7))
def _draw_spin(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A cross spinning in place, 1.1 turns per second."""
    length, width = 2.6 * unit * inst.scale, 0.6 * unit * inst.scale
    angle = 360.0 * _cycles(inst, t, 1.1)
    for extra in (0.0, 90.0):
        box = cv2.boxPoints((inst.anchor, (length, width), angle + extra))
        cv2.fillConvexPoly(canvas, np.round(box).astype(np.int32), inst.color, cv2.LINE_AA)


@_action_style("Slide", hue=120, anchor_x=(0.45, 0.55), anchor_y=(0.25, 0.75))
def _draw_slide(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A block sliding left and right at constant speed, one round trip every two seconds."""
    half = 0.8 * unit * inst.scale
    x = inst.anchor[0] + 0.3 * canvas.shape[1] * _triangle(_cycles(inst, t, 0.5))
    y = inst.anchor[1]
    cv2.rectangle(canvas, _point(x - half, y - half), _point(x + half, y + half), inst.color, -1)


@_action_style("Flash", hue=30, anchor_x=(0.2, 0.8), anchor_y=(0.25, 0.75))
def _draw_flash(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A lamp blinking on and off in place, 2.5 times per second."""
    if _cycles(inst, t, 2.5) % 1.0 < 0.5:
        cv2.circle(canvas, _point(*inst.anchor), round(1.2 * unit * inst.scale), inst.color, -1, cv2.LINE_AA)


@_action_style("Orbit", hue=150, anchor_x=(0.35, 0.65), anchor_y=(0.4, 0.6))
def _draw_orbit(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A disc circling a fixed centre, 0.8 turns per second."""
    angle = 2.0 * math.pi * _cycles(inst, t, 0.8)
    reach = 0.25 * min(canvas.shape[:2])
    x, y = inst.anchor[0] + reach * math.cos(angle), inst.anchor[1] + reach * math.sin(angle)
    cv2.circle(canvas, _point(x, y), round(0.8 * unit * inst.scale), inst.color, -1, cv2.LINE_AA)


@_action_style("Pulse", hue=90, anchor_x=(0.25, 0.75), anchor_y=(0.3, 0.7))
def _draw_pulse(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A ring growing and shrinking in place, 1.5 times per second."""
    grow = 0.5 + 0.5 * math.sin(2.0 * math.pi * _cycles(inst, t, 1.5))
    radius = unit * inst.scale * (0.6 + 0.9 * grow)
    cv2.circle(canvas, _point(*inst.anchor), round(radius), inst.color, max(2, round(0.35 * unit)), cv2.LINE_AA)


@_action_style("Zigzag", hue=15, anchor_x=(0.45, 0.55), anchor_y=(0.4, 0.6))
def _draw_zigzag(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A triangle drifting sideways while darting up and down, 2 zigzags per second."""
    x = inst.anchor[0] + 0.3 * canvas.shape[1] * _triangle(_cycles(inst, t, 0.3))
    y = inst.anchor[1] + 0.25 * canvas.shape[0] * _triangle(_cycles(inst, t, 2.0))
    size = unit * inst.scale
    corners = np.array([[x, y - size], [x - size, y + size], [x + size, y + size]])
    cv2.fillConvexPoly(canvas, np.round(corners).astype(np.int32), inst.color, cv2.LINE_AA)


@_action_style("Shake", hue=135, anchor_x=(0.25, 0.75), anchor_y=(0.3, 0.7))
def _draw_shake(canvas: np.ndarray, inst: ActionInstance, t: float, unit: float) -> None:
    """A tall bar vibrating sideways, 6 times per second."""
    x = inst.anchor[0] + 0.05 * canvas.shape[1] * math.sin(2.0 * math.pi * _cycles(inst, t, 6.0))
    w, h = 0.5 * unit * inst.scale, 1.4 * unit * inst.scale
    cv2.rectangle(canvas, _point(x - w, inst.anchor[1] - h), _point(x + w, inst.anchor[1] + h), inst.color, -1)


def action_class_names(num_classes: int) -> list[str]:
    """The class names of a ``num_classes``-class dataset, in generation order."""
    return list(ACTION_STYLES)[:num_classes]


# --- planning ---------------------------------------------------------------------------------------------

def _hsv_to_bgr(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    pixel = np.array([[[hue % 180, saturation, value]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0])


def _assign_classes(spec: SynthVideoSpec, rng: np.random.Generator) -> list[list[str]]:
    """Per video, its classes: a balanced primary class, and sometimes a second one."""
    names = action_class_names(spec.num_classes)
    primary = rng.permutation(np.arange(spec.num_videos) % spec.num_classes)
    classes = []
    for p in primary:
        chosen = [names[p]]
        if spec.num_classes > 1 and rng.random() < spec.two_class_fraction:
            others = [n for n in names if n != names[p]]
            chosen.append(others[rng.integers(len(others))])
        classes.append(chosen)
    return classes


def _assign_subsets(classes: list[list[str]], test_fraction: float) -> list[str]:
    """``test`` for the last ``test_fraction`` of each primary class's videos, so every class is in both."""
    subsets = ["train"] * len(classes)
    by_primary: dict[str, list[int]] = {}
    for index, chosen in enumerate(classes):
        by_primary.setdefault(chosen[0], []).append(index)
    for indices in by_primary.values():
        count = round(len(indices) * test_fraction)
        if test_fraction > 0 and len(indices) >= 2:
            count = max(1, min(count, len(indices) - 1))
        for index in indices[len(indices) - count:]:
            subsets[index] = "test"
    if test_fraction > 0 and len(classes) >= 2 and "test" not in subsets:  # too few videos per class
        subsets[-1] = "test"
    return subsets


def _instance_frames(classes: list[str], num_frames: int, spec: SynthVideoSpec,
                     rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """Non-overlapping ``(label, start, end)`` frame ranges with random lengths, order and gaps."""
    fps = spec.fps
    counts = {c: int(rng.integers(spec.instances_per_class[0], spec.instances_per_class[1] + 1)) for c in classes}
    min_gap = round(spec.min_gap * fps)
    floor = round(spec.instance_length[0] * fps)
    lengths = {c: [round(rng.uniform(*spec.instance_length) * fps) for _ in range(counts[c])] for c in classes}

    def budget() -> int:
        count = sum(map(len, lengths.values()))
        return min(int(num_frames * spec.max_action_fraction), num_frames - (count + 1) * min_gap)

    # Too much action for the video: drop instances of the most frequent class, one at a time.
    while sum(map(sum, lengths.values())) > budget() and any(len(v) > 1 for v in lengths.values()):
        busiest = max(lengths, key=lambda c: len(lengths[c]))
        lengths[busiest].pop()
    total, floors = sum(map(sum, lengths.values())), floor * sum(map(len, lengths.values()))
    if total > budget() >= floors:  # shorten what exceeds the minimum length, proportionally
        keep = (budget() - floors) / (total - floors)
        lengths = {c: [floor + int((n - floor) * keep) for n in v] for c, v in lengths.items()}
    labels = [c for c in classes for _ in lengths[c]]
    flat = [n for c in classes for n in lengths[c]]
    order = rng.permutation(len(labels))
    labels, flat = [labels[i] for i in order], [flat[i] for i in order]
    free = num_frames - sum(flat) - (len(flat) + 1) * min_gap
    if free < 0:
        raise DataError(f"video generator: {len(flat)} instances do not fit in {num_frames} frames; "
                        "raise the duration or shorten the instances")
    shares = np.floor(rng.dirichlet(np.ones(len(flat) + 1)) * free).astype(int)
    frames, cursor = [], 0
    for label, length, gap in zip(labels, flat, shares[:-1], strict=True):
        cursor += min_gap + int(gap)
        frames.append((label, cursor, cursor + length))
        cursor += length
    return frames


def _make_instance(label: str, start: int, end: int, size: tuple[int, int],
                   rng: np.random.Generator) -> ActionInstance:
    style = ACTION_STYLES[label]
    width, height = size
    anchor = (rng.uniform(*style.anchor_x) * width, rng.uniform(*style.anchor_y) * height)
    color = _hsv_to_bgr(style.hue + rng.integers(-3, 4), rng.integers(ACTION_MIN_SATURATION, 256),
                        rng.integers(210, 256))
    return ActionInstance(label, start, end, anchor, scale=float(rng.uniform(0.85, 1.15)),
                          speed=float(rng.uniform(0.85, 1.2)), phase=float(rng.random()), color=color)


def _scene_color(rng: np.random.Generator, value: tuple[int, int]) -> tuple[int, int, int]:
    return _hsv_to_bgr(rng.integers(0, 180), rng.integers(0, SCENE_MAX_SATURATION - 20), rng.integers(*value))


def _make_distractors(num_frames: int, spec: SynthVideoSpec, rng: np.random.Generator) -> list[Distractor]:
    width, height = spec.size
    unit = _unit(spec.size)
    out = []
    for index in range(int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))):
        radius = float(unit * rng.uniform(0.9, 1.6))
        color = _scene_color(rng, (40, 220))
        if index == 0:  # one slow blob wandering the whole video
            speed, angle = rng.uniform(4.0, 12.0), rng.uniform(0, 2 * math.pi)
            out.append(Distractor("blob", (rng.uniform(0, width), rng.uniform(0, height)),
                                  (speed * math.cos(angle), speed * math.sin(angle)), radius, color, 0, num_frames))
            continue
        # the others pass through once, left-to-right or right-to-left, at walking pace for this frame size
        speed = rng.uniform(0.2, 0.45) * width
        direction = 1.0 if rng.random() < 0.5 else -1.0
        crossing = round((width + 4 * radius) / speed * spec.fps)
        first = int(rng.integers(0, max(1, num_frames - crossing)))
        start_x = -2 * radius if direction > 0 else width + 2 * radius
        out.append(Distractor("passer", (start_x, rng.uniform(0.15, 0.85) * height), (direction * speed, 0.0),
                              radius, color, first, min(num_frames, first + crossing)))
    return out


def _unit(size: tuple[int, int]) -> float:
    """Base object size in pixels: about a ninth of the shorter side."""
    return 0.11 * min(size)


def plan_video(spec: SynthVideoSpec, index: int, video_id: str, subset: str, classes: list[str]) -> VideoPlan:
    """Draw one video's timeline, instances and distractors from its own random stream ``(seed, index)``."""
    rng = np.random.default_rng([spec.seed, index])
    num_frames = round(rng.uniform(*spec.duration) * spec.fps)
    frames = _instance_frames(classes, num_frames, spec, rng)
    instances = [_make_instance(label, s, e, spec.size, rng) for label, s, e in frames]
    distractors = _make_distractors(num_frames, spec, rng)
    return VideoPlan(video_id, subset, num_frames, spec.fps, spec.size, instances, distractors, (spec.seed, index))


# --- rendering --------------------------------------------------------------------------------------------

class SceneRenderer:
    """Renders the frames of one :class:`VideoPlan` (BGR uint8, ``[H, W, 3]``)."""

    def __init__(self, plan: VideoPlan, spec: SynthVideoSpec):
        self.plan = plan
        width, height = plan.size
        rng = np.random.default_rng([spec.seed, plan.seed[1], 1])  # the scene's own stream
        self._unit = _unit(plan.size)
        self._pan = (round(spec.pan_fraction * width), round(spec.pan_fraction * height))
        self._margin = spec.jitter_px
        self._texture = _background_texture(rng, width + 2 * (self._pan[0] + self._margin),
                                            height + 2 * (self._pan[1] + self._margin))
        self._pan_period = rng.uniform(25.0, 50.0, size=2)  # seconds per pan cycle, x and y
        self._pan_phase = rng.uniform(0.0, 2 * math.pi, size=2)
        self._light_period = rng.uniform(8.0, 20.0)  # seconds per brightness cycle
        self._light_phase = rng.uniform(0.0, 2 * math.pi)
        self._jitter = _camera_jitter(rng, plan.num_frames, spec.jitter_px)

    def frame(self, index: int) -> np.ndarray:
        width, height = self.plan.size
        t = index / self.plan.fps
        jx, jy = self._jitter[index]
        ox = round(self._pan[0] * (1 + math.sin(2 * math.pi * t / self._pan_period[0] + self._pan_phase[0])))
        oy = round(self._pan[1] * (1 + math.sin(2 * math.pi * t / self._pan_period[1] + self._pan_phase[1])))
        x0, y0 = ox + self._margin + jx, oy + self._margin + jy
        gain = 1.0 + 0.15 * math.sin(2 * math.pi * t / self._light_period + self._light_phase)
        canvas = cv2.convertScaleAbs(self._texture[y0:y0 + height, x0:x0 + width], alpha=gain)
        for item in self.plan.distractors:
            if item.first_frame <= index < item.last_frame:
                self._draw_distractor(canvas, item, index, (jx, jy))
        for inst in self.plan.instances:
            if inst.start_frame <= index < inst.end_frame:
                shifted = _shift_anchor(inst, -jx, -jy)
                ACTION_STYLES[inst.label].draw(canvas, shifted, (index - inst.start_frame) / self.plan.fps,
                                               self._unit)
        return canvas

    def _draw_distractor(self, canvas: np.ndarray, item: Distractor, index: int, jitter: tuple[int, int]) -> None:
        width, height = self.plan.size
        seconds = (index - item.first_frame) / self.plan.fps
        x = item.start[0] + item.velocity[0] * seconds
        y = item.start[1] + item.velocity[1] * seconds
        if item.kind == "blob":  # reflect off the frame edges
            x, y = _reflect(x, width), _reflect(y, height)
        axes = (round(item.radius * 1.3), round(item.radius))
        cv2.ellipse(canvas, _point(x - jitter[0], y - jitter[1]), axes, 0.0, 0.0, 360.0, item.color, -1,
                    cv2.LINE_AA)


def _shift_anchor(inst: ActionInstance, dx: float, dy: float) -> ActionInstance:
    if dx == 0 and dy == 0:
        return inst
    return ActionInstance(inst.label, inst.start_frame, inst.end_frame, (inst.anchor[0] + dx, inst.anchor[1] + dy),
                          inst.scale, inst.speed, inst.phase, inst.color)


def _reflect(value: float, limit: float) -> float:
    period = value % (2 * limit)
    return period if period <= limit else 2 * limit - period


def _background_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A desaturated two-octave noise texture with a few muted blocks: edges for the jitter to move."""
    def octave(cell: int) -> np.ndarray:
        coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
        return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

    luminance = 0.75 * octave(24) + 0.25 * octave(6)
    luminance /= max(float(luminance.std()), 1e-6)
    hue = np.full((height, width), rng.uniform(0, 180), np.float32) + 6.0 * octave(32)
    saturation = np.clip(rng.uniform(10, SCENE_MAX_SATURATION - 30) + 10.0 * octave(16), 0, SCENE_MAX_SATURATION)
    value = np.clip(rng.uniform(100, 150) + 30.0 * luminance, 0, 255)
    hsv = np.stack([np.mod(hue, 180), saturation, value], axis=-1).astype(np.uint8)
    texture = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    for _ in range(int(rng.integers(3, 7))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 12, width // 5)), int(rng.integers(height // 10, height // 3))
        cv2.rectangle(texture, (x, y), (x + w, y + h), _scene_color(rng, (60, 200)), -1)
    return texture


def _camera_jitter(rng: np.random.Generator, num_frames: int, amplitude: int) -> np.ndarray:
    """Per-frame integer camera offsets ``[num_frames, 2]``: a bounded random walk that moves every few frames."""
    steps = rng.integers(-1, 2, size=(num_frames, 2)) * (rng.random((num_frames, 1)) < 0.3)
    offsets = np.zeros((num_frames, 2), dtype=np.int64)
    position = np.zeros(2, dtype=np.int64)
    for i in range(num_frames):
        position = np.clip(position + steps[i], -amplitude, amplitude)
        offsets[i] = position
    return offsets


def write_video(plan: VideoPlan, spec: SynthVideoSpec, path: str | Path) -> Path:
    """Render ``plan`` into a video file at ``path`` (atomically: a temporary name, then rename)."""
    fourcc, _ = CODECS[spec.codec]
    renderer = SceneRenderer(plan, spec)
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), plan.fps, plan.size)
        if not writer.isOpened():
            raise EcmEdgeError(f"OpenCV cannot write {spec.codec} video to {path}; try another codec "
                               f"({', '.join(CODECS)})")
        try:
            for index in range(plan.num_frames):
                writer.write(renderer.frame(index))
        finally:
            writer.release()
    return Path(path)


# --- the dataset ------------------------------------------------------------------------------------------

def generate_video_dataset(out_dir: str | Path, *, num_videos: int = 40, num_classes: int = 4, seed: int = 0,
                           fps: float = 25.0, size: tuple[int, int] = (160, 120),
                           duration: tuple[float, float] = (20.0, 40.0),
                           instance_length: tuple[float, float] = (2.0, 6.0), codec: str = "mjpg",
                           progress: Callable[[int, int], None] | None = None,
                           **spec_overrides: object) -> SynthVideoDataset:
    """Write ``num_videos`` procedural videos with their ground truth and splits under ``out_dir``.

    Same arguments, same output: annotations and pixels depend only on the seed and the spec. ``progress`` is
    called as ``progress(videos_done, num_videos)`` after each video. Further :class:`SynthVideoSpec` fields
    (``two_class_fraction``, ``test_fraction``, ``jitter_px``, ...) can be given by name.
    """
    try:
        spec = SynthVideoSpec(num_videos=num_videos, num_classes=num_classes, seed=seed, fps=fps,
                              size=tuple(size), duration=tuple(duration), instance_length=tuple(instance_length),
                              codec=codec, **spec_overrides)
    except TypeError as exc:
        raise DataError(f"video generator: {exc}") from None
    spec.validate()
    root = Path(out_dir)
    classes = _assign_classes(spec, np.random.default_rng(spec.seed))
    subsets = _assign_subsets(classes, spec.test_fraction)
    digits = max(4, len(str(spec.num_videos - 1)))
    ext = CODECS[spec.codec][1]
    videos: dict[str, VideoAnnotation] = {}
    paths: dict[str, Path] = {}
    for index in range(spec.num_videos):
        vid = f"video_{index:0{digits}d}"
        plan = plan_video(spec, index, vid, subsets[index], classes[index])
        paths[vid] = write_video(plan, spec, root / "videos" / f"{vid}{ext}")
        videos[vid] = plan.annotation()
        logger.debug("wrote %s: %d frames, %d instances", paths[vid], plan.num_frames, len(plan.instances))
        if progress is not None:
            progress(index + 1, spec.num_videos)
    names = sorted(action_class_names(spec.num_classes))
    annotations = Annotations(videos, names)
    annotations.save_json(root / "gt.json")
    train_ids = [v for v, a in videos.items() if a.subset == "train"]
    test_ids = [v for v, a in videos.items() if a.subset == "test"]
    atomic_write_text(root / "split_train.txt", "".join(f"{v}\n" for v in train_ids))
    atomic_write_text(root / "split_test.txt", "".join(f"{v}\n" for v in test_ids))
    atomic_write_json(root / MANIFEST_NAME, {**asdict(spec), "class_names": names})
    return SynthVideoDataset(root, annotations, paths, names, spec, train_ids, test_ids)
