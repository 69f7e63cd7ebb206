"""The post-processing parameters all kernels receive, frozen and checked once.

Defaults and allowed words come from the config schema (``ecm_edge.config.PostConfig`` and ``CHOICES``); the
mode switch lives here too: the kernels ask for the behaviours a mode selects (``iou_offset``,
``drops_lone_first_frame``, ``opencv_interpolation``), never for the mode's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ecm_edge.config import CHOICES, PostConfig
from ecm_edge.errors import ConfigError

MODES: tuple[str, ...] = CHOICES["post.mode"]
TIME_BASES: tuple[str, ...] = CHOICES["post.time_base"]
MAX_THRESHOLDS = 32767  # the compiled kernels store, per frame, how many thresholds it passes as int16


@dataclass(frozen=True, eq=False)
class PostParams:
    """What turns a CAS into segments (docs/design.md §5), independent of the kernels that run it.

    Field meanings and defaults are those of the config's ``post`` section. ``act_thresholds`` must be
    non-negative and strictly ascending: the compiled kernels count, per frame, how many thresholds the frame
    passes, and rely on runs at a higher threshold nesting inside runs at a lower one.
    """

    mode: str = PostConfig.mode
    class_threshold: float = PostConfig.class_threshold
    act_thresholds: np.ndarray = field(default_factory=lambda: PostConfig().act_thresholds)
    oic_lambda: float = PostConfig.oic_lambda
    gamma: float = PostConfig.gamma
    nms_iou: float = PostConfig.nms_iou
    time_base: str = PostConfig.time_base

    def __post_init__(self) -> None:
        thresholds = np.array(self.act_thresholds, dtype=np.float64).reshape(-1)
        thresholds.setflags(write=False)
        object.__setattr__(self, "act_thresholds", thresholds)
        for name in ("class_threshold", "oic_lambda", "gamma", "nms_iou"):
            value = float(getattr(self, name))
            if not np.isfinite(value):
                raise ConfigError(f"post.{name} must be a finite number, got {value}")
            object.__setattr__(self, name, value)
        if self.mode not in MODES:
            raise ConfigError(f"post.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.time_base not in TIME_BASES:
            raise ConfigError(f"post.time_base must be one of {', '.join(TIME_BASES)}, got {self.time_base!r}")
        if thresholds.size == 0:
            raise ConfigError("post.act_thresh_start/stop/step give no activation threshold; "
                              "arange(start, stop, step) must hold at least one value")
        if not np.all(np.isfinite(thresholds)) or thresholds[0] < 0 or np.any(np.diff(thresholds) <= 0):
            raise ConfigError(f"activation thresholds must be finite, non-negative and strictly ascending "
                              f"(a positive post.act_thresh_step), got {thresholds.tolist()}")
        if thresholds.size > MAX_THRESHOLDS:
            raise ConfigError(f"at most {MAX_THRESHOLDS} activation thresholds are supported, got {thresholds.size}")
        if self.oic_lambda < 0:
            raise ConfigError(f"post.oic_lambda must be non-negative, got {self.oic_lambda}")

    @classmethod
    def from_config(cls, post: PostConfig) -> PostParams:
        """The parameters of a ``post`` config section; thresholds exactly ``np.arange(start, stop, step)``."""
        if post.act_thresh_step == 0:
            raise ConfigError("post.act_thresh_step must not be 0")
        return cls(
            mode=post.mode,
            class_threshold=post.class_threshold,
            act_thresholds=np.arange(post.act_thresh_start, post.act_thresh_stop, post.act_thresh_step),
            oic_lambda=post.oic_lambda,
            gamma=post.gamma,
            nms_iou=post.nms_iou,
            time_base=post.time_base,
        )

    def replace(self, **changes: object) -> PostParams:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    # ---- the mode switch: what ``ecm`` (bug-compatible with the published code) changes against ``clean`` ----

    @property
    def iou_offset(self) -> float:
        """Added to interval lengths and overlaps by the IoU: 1 in ``ecm`` (the published pixel-box convention
        ``end − start + 1``, although the units are seconds), 0 in ``clean`` (the true IoU)."""
        return 1.0 if self.mode == "ecm" else 0.0

    @property
    def drops_lone_first_frame(self) -> bool:
        """``ecm``: a threshold whose only surviving frame is frame 0 yields no proposal (the published code
        tests ``positions.any()``, and index 0 reads as false)."""
        return self.mode == "ecm"

    @property
    def opencv_interpolation(self) -> bool:
        """``ecm``: interpolate as ``cv2.resize`` (INTER_LINEAR) does a float32 row, bit for bit
        (``ecm_edge.kernels.reference.interpolate_opencv``); ``clean``: exact float64 interpolation."""
        return self.mode == "ecm"

    @property
    def time_by_duration(self) -> bool:
        return self.time_base == "duration"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PostParams):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name))
                   if f.name == "act_thresholds" else getattr(self, f.name) == getattr(other, f.name)
                   for f in dataclasses.fields(self))

    def __hash__(self) -> int:
        return hash((self.mode, self.class_threshold, self.act_thresholds.tobytes(), self.oic_lambda, self.gamma,
                     self.nms_iou, self.time_base))
