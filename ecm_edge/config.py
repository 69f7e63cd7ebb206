"""The one configuration schema of ecm-edge.

Every tunable number lives here as a typed dataclass field with its meaning and unit; the shipped YAML files
in ``configs/`` (``thumos14``, ``activitynet12``, ``activitynet13``, ``small``) set the paper constants. A config
is addressed by a shipped name or a path, then refined with ``--set section.key=value`` overrides that are type
checked; an unknown key is an error that names the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ecm_edge.architecture import DROPOUT, LEAKY_SLOPE, STREAM_WINDOW, topk_count
from ecm_edge.errors import ConfigError
from ecm_edge.io import atomic_write_text

log = logging.getLogger("ecm_edge")


@dataclass
class DataConfig:
    """Where features come from and how they are cut to a fixed length."""

    dataset: str = "thumos14"  # name used in reports
    feature_dim: int = 2048  # D: channels per snippet (I3D RGB 1024 ‖ flow 1024)
    modalities: list[str] = field(default_factory=lambda: ["rgb", "flow"])  # per-modality folders, concatenated
    t_fixed: int = 750  # T_fixed: snippets per video after resampling (train and offline test)
    snippet_frames: int = 16  # frames per snippet
    feature_fps: float = 25.0  # frame rate features are extracted at; one snippet = 16 / 25 = 0.64 s
    default_fps: float = 25.0  # video frame rate assumed when an annotation carries none
    val_fraction: float = 0.1  # share of the training videos held out for validation (0 disables)
    val_seed: int = 0  # seed of the held-out split, independent of the training seed
    cache_mb: int = 1024  # MiB of decoded features a dataset keeps in memory (least recently used first out; 0: off)

    @property
    def snippet_seconds(self) -> float:
        return self.snippet_frames / self.feature_fps


@dataclass
class ModelConfig:
    """The ECM network (docs/design.md §3)."""

    hidden_dim: int = 2048  # H: channels of the shared temporal-convolution classifier Φ
    num_classes: int = 20  # C
    topk_ratio: float = 0.125  # r: top-k = int(T_fixed · r) snippets form the video score
    dropout: float = DROPOUT  # after the second convolution of Φ
    leaky_slope: float = LEAKY_SLOPE  # LeakyReLU negative slope
    normalize_aggregation: bool = False  # divide the post-stream sums by ΣW (not in the paper; off in paper configs)


@dataclass
class TrainConfig:
    """Optimization (Adam) and the loss weights."""

    epochs: int = 150
    batch_size: int = 16
    lr: float = 2.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5.0e-4
    lr_decay_epoch: int = 0  # epoch at which lr is multiplied by lr_decay_factor (0: never)
    lr_decay_factor: float = 0.1
    # -- the fast recipe's switches (off in the paper configs: they are what the paper's numbers mean) --
    lr_schedule: str = "step"  # "step": lr_decay_epoch / lr_decay_factor; "cosine": lr → lr·lr_min_factor at the end
    lr_min_factor: float = 0.01  # cosine: the last epoch's lr as a fraction of lr
    lr_warmup_epochs: int = 0  # lr rises linearly from lr/N to lr over the first N epochs (0: none)
    normalized_warmup_epochs: int = 0  # post-stream sums divided by ΣW^p, p falling from 1 to 0 over N epochs
    grad_clip: float = 0.0  # clip the gradient's global L2 norm to this (0: no clipping)
    patience: int = 0  # stop once N evaluations in a row did not raise the best mAP (0: run every epoch)
    seed: int = 16
    c2c_weight: float = 0.05  # weight of L_c2c, the MSE between pre- and post-stream logits
    a2c_weight: float = 5.0  # λ: weight of L_a2c, the background-branch BCE
    eval_every: int = 1  # evaluate every N epochs (0: only at the end)
    eval_split: str = "val"  # "val" (held-out training videos) or "test"
    amp: str = "off"  # "off" | "bf16" | "fp16" (CUDA only; CPU always trains in fp32)
    compile: bool = False  # torch.compile the model (CUDA only)
    num_workers: int = 0  # data-loader worker processes


@dataclass
class PostConfig:
    """Post-processing of the CAS into segments (docs/design.md §5)."""

    mode: str = "ecm"  # "ecm": bug-compatible with the published code; "clean": true IoU, no index-0 drop
    class_threshold: float = 0.25  # keep classes whose video score is at least this
    act_thresh_start: float = 0.01  # activation thresholds = arange(start, stop, step)
    act_thresh_stop: float = 0.2
    act_thresh_step: float = 0.025
    oic_lambda: float = 0.4  # outer window = int(λ · run length) on each side
    gamma: float = 0.15  # weight of the video score added to the OIC score
    nms_iou: float = 0.6  # per-class NMS IoU threshold
    time_base: str = "fps"  # "fps": seconds = frame / fps (THUMOS14); "duration": frame / num_frames · duration
    kernels: str = "auto"  # post-processing kernels: "auto" (cuda with a GPU, else cpu) | "numpy" | "cpu" | "cuda"
    score_source: str = "cas"  # row thresholded per class: "cas" (paper), "weights" (transition W), "fused" (mean)

    @property
    def act_thresholds(self) -> np.ndarray:
        return np.arange(self.act_thresh_start, self.act_thresh_stop, self.act_thresh_step)


@dataclass
class EvalConfig:
    """Detection mAP."""

    iou_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    protocol: str = "activitynet"  # "activitynet" or "thumos14" (drops detections on ambiguous segments)


@dataclass
class ExportConfig:
    """ONNX / TensorRT export."""

    opset: int = 17
    stem: str = "ecm"  # artifact file stem: <stem>.onnx, <stem>.fp16.onnx, ...
    min_t: int = 1  # TensorRT optimization profile for T: min / opt / max snippets
    opt_t: int = 750
    max_t: int = 2048
    max_batch: int = 1024  # TensorRT profile's largest batch: streams whose windows run in one call
    stream_opt_batch: int = 64  # the streaming graph's profile is tuned for this many streams per call
    workspace_mb: int = 1024  # TensorRT builder workspace limit
    stream_opt_window: int = 5  # TensorRT profile of the streaming graph's window W (snippets): opt ...
    stream_max_window: int = 64  # ... and max (min: the receptive field, 2·radius + 1); larger W catches up after a stall
    trt_strongly_typed: bool = True  # false: TensorRT 10 weakly typed build with FP16/INT8 flags (not on 11.x)
    calib_videos: int = 200  # at most this many videos for INT8 calibration
    calib_method: str = "percentile"  # activation range estimator: "minmax" | "percentile"
    calib_percentile: float = 99.99


@dataclass
class StreamConfig:
    """Streaming runtime (docs/design.md §7)."""

    horizon: int = 256  # snippets of history for causal video scores and normalization
    warmup: int = 32  # snippets a stream must have seen before its first segment is emitted (earlier ones wait)
    # head columns per source snippet, the causal stand-in for resampling each video to data.t_fixed
    # (ecm_edge.runtime.resample); "auto": the training videos' median t_fixed / length, which `ecm-edge train`
    # resolves and records in the run's config; 1: the native snippet rate
    columns_per_snippet: str = "auto"
    frame_policy: str = "auto"  # "latest" (live: drop stale frames) | "all" (files) | "auto"
    reconnect_initial_s: float = 0.5  # first reconnect delay after a lost live source
    reconnect_max_s: float = 30.0  # reconnect delay cap (exponential backoff)
    reconnect_attempts: int = 0  # give up after this many failed reopen attempts in a row (0: never give up)
    open_timeout_s: float = 10.0  # opening a camera or URL fails after this long (at start: an error, no hang)
    read_timeout_s: float = 5.0  # a live source that delivers no frame for this long counts as lost
    queue_frames: int = 32  # frames buffered between the reader thread and the pipeline with policy "all"
    # snippets a StreamEngine (many streams per process) queues per source between ticks; snippets pushed beyond
    # it are dropped and counted per source (ecm_edge.runtime.engine)
    queue_snippets: int = 64
    max_frame_gap_s: float = 1.0  # a longer gap between source frames restarts snippet assembly (no stale fill)
    stats_every_s: float = 10.0  # seconds between `stats` events (0: never)
    emit_open: bool = False  # also emit `segment_open` early alerts
    mode: str = "clean"  # post-processing mode used while streaming
    # causal post-processing of many streams (ecm_edge.runtime.causal): "auto" (cuda with a GPU, else cpu) |
    # "numpy" (one OnlinePostProcessor per stream, the reference) | "cpu" (numba) | "cuda" (numba CUDA)
    kernels: str = "auto"
    event_queue: int = 1024  # events waiting for the writer thread that feeds the sinks (the pipeline waits beyond)
    webhook_timeout_s: float = 5.0  # HTTP timeout of one webhook POST
    webhook_retries: int = 3  # POST attempts per event before it goes to the spool file
    webhook_backoff_s: float = 0.5  # first delay between attempts and between probes of a down receiver (doubles)
    webhook_backoff_max_s: float = 30.0  # cap of that delay
    webhook_queue: int = 1000  # events waiting for delivery; beyond this they go straight to the spool file
    webhook_spool: str = "webhook-spool.jsonl"  # undeliverable events, re-sent first once the receiver is back


@dataclass
class AlertsConfig:
    """Which detections become ``alert`` events (docs/design.md §7, Alerts) and how ``ecm-edge calibrate`` picks the
    per-class operating points they use."""

    enabled: bool = True  # alerts from segments at or above their class's operating point (when there are points)
    min_score: float = 0.0  # > 0: this score is every class's operating point, instead of the calibrated ones
    min_duration_s: float = 0.0  # shorter segments never alert
    cooldown_s: float = 30.0  # per source and class: a segment starting within this long after an alert merges into it
    precision: float = 0.8  # calibrate: the target precision per class on the held-out split
    tiou: float = 0.5  # calibrate: temporal IoU at which a segment matches a ground-truth instance
    min_instances: int = 5  # calibrate: a class with fewer held-out instances gets the global operating point


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    post: PostConfig = field(default_factory=PostConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    name: str = "custom"  # the config's name (file stem for shipped configs)

    @property
    def topk(self) -> int:
        """k of the top-k video score, fixed from T_fixed and r as in the reference."""
        return topk_count(self.data.t_fixed, self.model.topk_ratio)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config (used next to every run's outputs)."""
        return atomic_write_text(Path(path), self.to_yaml())


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if f.name != "name")

POST_MODES: tuple[str, ...] = ("ecm", "clean")  # post.mode and stream.mode (docs/design.md §5)

# Keys whose value is one of a fixed set of words: the one list of each; code that checks such a key reads it here.
CHOICES: dict[str, tuple[str, ...]] = {
    "train.eval_split": ("val", "test"),
    "train.amp": ("off", "bf16", "fp16"),
    "train.lr_schedule": ("step", "cosine"),
    "post.mode": POST_MODES,
    "post.time_base": ("fps", "duration"),
    "post.kernels": ("auto", "numpy", "cpu", "cuda"),
    "post.score_source": ("cas", "weights", "fused"),
    "eval.protocol": ("activitynet", "thumos14"),
    "export.calib_method": ("minmax", "percentile"),
    "stream.frame_policy": ("auto", "latest", "all"),
    "stream.mode": POST_MODES,
    "stream.kernels": ("auto", "numpy", "cpu", "cuda"),
}


# Keys renamed since configs were first stored: old "section.key" -> new. Stored configs (model.json, checkpoints,
# config.yaml written before the rename) and --set still accept the old name, read as the new one with a
# deprecation warning once per process.
RENAMED_KEYS: dict[str, str] = {
    "post.backend": "post.kernels",
}
_warned_renames: set[str] = set()


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: ``low`` / ``high`` bounds (None: unbounded), each closed or open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        closed_low = self.low is not None and not self.low_open
        closed_high = self.high is not None and not self.high_open
        return f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"


AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)  # probabilities, thresholds on normalized scores, IoUs
OPEN_FRACTION = Range(0, 1, high_open=True)

# The range of every numeric key (each element of a list key), checked whenever a value is set; a test holds the
# schema to it (a numeric key without a range fails it).
RANGES: dict[str, Range] = {
    "data.feature_dim": AT_LEAST_ONE, "data.t_fixed": AT_LEAST_ONE, "data.snippet_frames": AT_LEAST_ONE,
    "data.feature_fps": POSITIVE, "data.default_fps": POSITIVE, "data.val_fraction": OPEN_FRACTION,
    "data.val_seed": NON_NEGATIVE, "data.cache_mb": NON_NEGATIVE,
    "model.hidden_dim": AT_LEAST_ONE, "model.num_classes": AT_LEAST_ONE,
    "model.topk_ratio": Range(0, 1, low_open=True), "model.dropout": OPEN_FRACTION, "model.leaky_slope": FRACTION,
    "train.epochs": AT_LEAST_ONE, "train.batch_size": AT_LEAST_ONE, "train.lr": POSITIVE,
    "train.betas": OPEN_FRACTION, "train.weight_decay": NON_NEGATIVE, "train.lr_decay_epoch": NON_NEGATIVE,
    "train.lr_decay_factor": POSITIVE, "train.seed": NON_NEGATIVE, "train.c2c_weight": NON_NEGATIVE,
    "train.a2c_weight": NON_NEGATIVE, "train.eval_every": NON_NEGATIVE, "train.num_workers": NON_NEGATIVE,
    "train.lr_min_factor": FRACTION, "train.lr_warmup_epochs": NON_NEGATIVE,
    "train.normalized_warmup_epochs": NON_NEGATIVE, "train.grad_clip": NON_NEGATIVE, "train.patience": NON_NEGATIVE,
    "post.class_threshold": FRACTION, "post.act_thresh_start": FRACTION, "post.act_thresh_stop": FRACTION,
    "post.act_thresh_step": Range(0, 1, low_open=True), "post.oic_lambda": NON_NEGATIVE,
    "post.gamma": NON_NEGATIVE, "post.nms_iou": FRACTION,
    "eval.iou_thresholds": Range(0, 1, low_open=True),
    "export.opset": Range(13), "export.min_t": AT_LEAST_ONE, "export.opt_t": AT_LEAST_ONE,
    "export.max_t": AT_LEAST_ONE, "export.max_batch": AT_LEAST_ONE, "export.stream_opt_batch": AT_LEAST_ONE,
    "export.workspace_mb": AT_LEAST_ONE,
    "export.stream_opt_window": Range(STREAM_WINDOW), "export.stream_max_window": Range(STREAM_WINDOW),
    "export.calib_videos": AT_LEAST_ONE, "export.calib_percentile": Range(0, 100, low_open=True),
    "alerts.min_score": Range(0, 1), "alerts.min_duration_s": NON_NEGATIVE, "alerts.cooldown_s": NON_NEGATIVE,
    "alerts.precision": Range(0, 1, low_open=True), "alerts.tiou": Range(0, 1, low_open=True),
    "alerts.min_instances": AT_LEAST_ONE,
    "stream.horizon": AT_LEAST_ONE, "stream.warmup": NON_NEGATIVE, "stream.reconnect_initial_s": POSITIVE,
    "stream.reconnect_max_s": POSITIVE, "stream.reconnect_attempts": NON_NEGATIVE,
    "stream.open_timeout_s": POSITIVE, "stream.read_timeout_s": POSITIVE, "stream.queue_frames": AT_LEAST_ONE,
    "stream.queue_snippets": AT_LEAST_ONE,
    "stream.max_frame_gap_s": POSITIVE, "stream.stats_every_s": NON_NEGATIVE, "stream.event_queue": AT_LEAST_ONE,
    "stream.webhook_timeout_s": POSITIVE, "stream.webhook_retries": AT_LEAST_ONE,
    "stream.webhook_backoff_s": POSITIVE, "stream.webhook_backoff_max_s": POSITIVE,
    "stream.webhook_queue": AT_LEAST_ONE,
}

# Pairs of keys whose values must be ordered (first ≤ second), checked once a config is complete.
ORDERED: tuple[tuple[str, str], ...] = (
    ("post.act_thresh_start", "post.act_thresh_stop"),
    ("export.min_t", "export.opt_t"), ("export.opt_t", "export.max_t"),
    ("export.stream_opt_window", "export.stream_max_window"),
    ("stream.reconnect_initial_s", "stream.reconnect_max_s"),
    ("stream.webhook_backoff_s", "stream.webhook_backoff_max_s"),
)


def shipped_config_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("ecm_edge.configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path | None = "thumos14", overrides: typing.Sequence[str] = ()) -> Config:
    """Load a shipped config by name (``thumos14``) or a YAML file by path, then apply ``section.key=value``."""
    if name_or_path is None:
        cfg = Config()
    else:
        raw, name = _read_config_source(str(name_or_path))
        cfg = config_from_dict(raw, source=str(name_or_path))
        cfg.name = raw.get("name", name) if isinstance(raw.get("name"), str) else name
    for item in overrides:
        apply_override(cfg, item)
    check_ordered(cfg, str(name_or_path) if name_or_path is not None else "defaults")
    return cfg


def check_ordered(cfg: Config, source: str) -> None:
    """The pairs of :data:`ORDERED` in order (a threshold range that is empty, a profile whose min exceeds its
    max), one line naming both keys and values."""
    for first, second in ORDERED:
        low, high = _get(cfg, first), _get(cfg, second)
        strict = first == "post.act_thresh_start"  # an empty threshold range
        if low > high or (strict and low == high):
            raise ConfigError(f"{source}: {first} ({low:g}) must be {'below' if strict else 'at most'} "
                              f"{second} ({high:g})")


def _get(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(cfg, section), key)


def _read_config_source(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A shipped name wins over a same-named folder; anything with a YAML suffix or an existing file is a path."""
    path = Path(name_or_path)
    names = shipped_config_names()
    if path.is_file():
        text, name = path.read_text(), path.stem
    elif name_or_path in names and path.suffix not in (".yaml", ".yml"):
        text, name = resources.files("ecm_edge.configs").joinpath(f"{name_or_path}.yaml").read_text(), name_or_path
    elif path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"config file {path} does not exist")
    else:
        raise ConfigError(f"unknown config {name_or_path!r}{_did_you_mean(name_or_path, names)}; "
                          f"shipped configs: {', '.join(names)}, or pass a path to a YAML file")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {name_or_path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {name_or_path} must be a mapping of sections, got {type(raw).__name__}")
    return raw, name


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts, checking every key and value type."""
    cfg = Config()
    for section, values in raw.items():
        if section == "name":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r}{_did_you_mean(section, SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        for key, value in values.items():
            _set_field(cfg, section, key, value, source)
    return cfg


def config_from_stored(raw: Mapping[str, Any], source: str) -> Config:
    """The Config a run or an artifact recorded (``Config.to_dict()`` kept in a checkpoint or ``model.json``),
    its name included; ``source`` names where it was read, for the messages of invalid keys or values."""
    stored = dict(raw)
    cfg = config_from_dict(stored, source=source)
    cfg.name = str(stored.get("name", "custom"))
    check_ordered(cfg, source)
    return cfg


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    """Apply ``section.key=value`` overrides to a loaded or stored config, then check the ordered pairs once."""
    for item in overrides:
        apply_override(cfg, item)
    if overrides:
        check_ordered(cfg, "--set")
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML and type checked."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, text = item.split("=", 1)
    if "." not in dotted:
        raise ConfigError(f"override {item!r} must name a section and a key, e.g. train.epochs=10"
                          f"{_did_you_mean(dotted, _all_keys())}")
    section, key = dotted.strip().split(".", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, bool) and RENAMED_KEYS.get(f"{section}.{key}", f"{section}.{key}") in CHOICES:
        value = text.strip()  # YAML reads off/on/yes/no as booleans; a word-valued key keeps the word
    _set_field(cfg, section, key, value, "--set")


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_type(s))]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Config)[section]


def _set_field(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    renamed = RENAMED_KEYS.get(f"{section}.{key}")
    if renamed is not None:
        _warn_renamed(f"{section}.{key}", renamed, source)
        section, key = renamed.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"{source}: unknown key {section}.{key}{_did_you_mean(f'{section}.{key}', _all_keys())}")
    target = getattr(cfg, section)
    hints = typing.get_type_hints(type(target))
    if key not in hints:
        raise ConfigError(f"{source}: unknown key {section}.{key}{_did_you_mean(f'{section}.{key}', _all_keys())}")
    value = _coerce(value, hints[key], f"{section}.{key}", source)
    choices = CHOICES.get(f"{section}.{key}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}: {section}.{key} must be one of {', '.join(choices)}, got {value!r}"
                          f"{_did_you_mean(str(value), choices)}")
    allowed = RANGES.get(f"{section}.{key}")
    if allowed is not None:
        for item in value if isinstance(value, list) else [value]:
            if item not in allowed:
                raise ConfigError(f"{source}: {section}.{key} must be in {allowed}, got {item!r}")
    setattr(target, key, value)


def _warn_renamed(old: str, new: str, source: str) -> None:
    if old not in _warned_renames:
        _warned_renames.add(old)
        log.warning("%s: %s is deprecated, read as %s; write %s instead", source, old, new, new)


def _coerce(value: Any, hint: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where} must be a list of {item_type.__name__}, got {value!r}")
        return [_coerce(v, item_type, where, source) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {where} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {where} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {where} must be a string, got {value!r}")
    return value


def _did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
