"""Pictures and subtitles of one video's detections: a ground-truth vs prediction timeline, and ``.srt``.

:func:`plot_timeline` draws one track per class that occurs in the ground truth or the detections. Each track
shows, on one time axis in seconds, the ground-truth segments (dark bars), the detections (bars in the class
colour, darker for higher scores, labelled with their score; overlapping detections are stacked in lanes) and,
when raw predictions are given, the class activation sequence normalized exactly as post-processing does it
(docs/design.md §5 step 1), with the ground truth shaded behind it.

:func:`write_srt` writes the detections as SubRip subtitles, so a video player shows "HighJump 0.83" while the
detected action plays.

matplotlib is imported only when plotting (the ``plot`` extra) and draws through the Agg canvas, never pyplot,
so plotting works headless and leaves the caller's backend alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.errors import DataError, MissingDependencyError
from ecm_edge.io import atomic_path, atomic_write_text
from ecm_edge.kernels.reference import normalize_rows as normalize_cas

logger = logging.getLogger("ecm_edge")

# Layout of one class track, in data units of its y axis (bands stacked bottom to top: CAS, detections, GT).
_BAND = 1.0  # height of a ground-truth band or of one detection lane
_BAR = 0.72  # bar height inside a band
_CAS_BAND = 1.6  # height of the CAS band
_GAP = 0.25  # space between bands
_INCHES_PER_UNIT = 0.32  # figure height per y unit
_WIDTH_INCHES = 12.0
_DPI = 110
_MIN_LABEL_FRACTION = 0.025  # a detection bar gets its score printed when at least this share of the axis wide
_GT_COLOR = "#3b3b3b"
_ALERT_EDGE = "#000000"  # detections that became alerts: a thick black outline
_ALERT_LW = 2.2
_CAS_COLOR_ALPHA = 0.25


@dataclass(frozen=True)
class Detection:
    """One detected segment of one video."""

    label: str
    start: float  # seconds
    end: float  # seconds
    score: float
    alert: bool = False  # the detection reached its class's operating point and became an alert


def as_detections(entries: Iterable[Detection | Mapping[str, Any]], source: str = "detections") -> list[Detection]:
    """Detections from :class:`Detection` objects or ActivityNet result entries ``{label, score, segment}``
    (with ``alert: true`` where one became an alert)."""
    out = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Detection):
            out.append(entry)
            continue
        try:
            start, end = (float(x) for x in entry["segment"])
            out.append(Detection(str(entry["label"]), start, end, float(entry["score"]),
                                 bool(entry.get("alert", False))))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{source}: detection {i} needs 'label', 'score' and 'segment': [start, end]") from None
    return out


def select_detections(detections: Sequence[Detection], *, min_score: float | None = None,
                      top: int | None = None) -> list[Detection]:
    """The detections scoring at least ``min_score``, best first, at most ``top`` of them."""
    kept = [d for d in detections if min_score is None or d.score >= min_score]
    kept.sort(key=lambda d: -d.score)
    return kept if top is None else kept[:top]


# --- SubRip -------------------------------------------------------------------------------------------------

def format_srt_time(seconds: float) -> str:
    """``HH:MM:SS,mmm`` (negative times clamp to zero)."""
    return _format_ms(round(max(0.0, seconds) * 1000.0))


def _format_ms(total_ms: int) -> str:
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def srt_text(detections: Iterable[Detection | Mapping[str, Any]]) -> str:
    """SubRip text: one numbered cue per detection, in order of start time, reading ``Label 0.83``."""
    dets = sorted(as_detections(detections), key=lambda d: (d.start, -d.score))
    cues = []
    for number, det in enumerate(dets, 1):
        start_ms = round(max(0.0, det.start) * 1000.0)
        end_ms = max(round(max(0.0, det.end) * 1000.0), start_ms + 1)  # players skip empty cues
        cues.append(f"{number}\n{_format_ms(start_ms)} --> {_format_ms(end_ms)}\n{det.label} {det.score:.2f}\n")
    return "\n".join(cues)


def write_srt(detections_for_video: Iterable[Detection | Mapping[str, Any]], path: str | Path) -> Path:
    """Write one video's detections as a ``.srt`` subtitle file (atomically)."""
    return atomic_write_text(path, srt_text(detections_for_video))


# --- timeline plot ------------------------------------------------------------------------------------------

def plot_timeline(video_id: str, gt_segments: Iterable[tuple[str, float, float]],
                  detections: Iterable[Detection | Mapping[str, Any]], class_names: Sequence[str], *,
                  cas: np.ndarray | None = None, video_scores: np.ndarray | None = None,
                  duration: float, out_path: str | Path, title: str | None = None) -> Path:
    """Draw ground truth vs detections (and CAS curves) of one video; write the image to ``out_path``.

    ``gt_segments`` are ``(label, start, end)`` in seconds; ``detections`` are :class:`Detection` objects or
    ActivityNet result entries. ``cas`` is the raw ``[C, T]`` CAS with rows in ``class_names`` order, its T
    columns spanning ``[0, duration]``; ``video_scores`` ``[C]`` is shown next to each class name. The format
    follows the suffix of ``out_path`` (``.png``, ``.pdf``, ``.svg``).
    """
    if not duration or duration <= 0:
        raise DataError(f"timeline of {video_id}: duration must be positive, got {duration}")
    gt = [(str(label), float(s), float(e)) for label, s, e in gt_segments]
    dets = as_detections(detections, source=f"detections of {video_id}")
    tracks = _track_classes(class_names, gt, dets)
    figure_module, canvas_module, patches, lines = _matplotlib()
    cas_n = normalize_cas(cas) if cas is not None else None
    layouts = [_TrackLayout(name, _lanes([d for d in dets if d.label == name]), cas_n is not None) for name in tracks]
    heights = [layout.height for layout in layouts] or [_BAND]
    fig = figure_module.Figure(figsize=(_WIDTH_INCHES, 1.3 + _INCHES_PER_UNIT * (sum(heights) + 1.3 * len(heights))),
                               dpi=_DPI)
    canvas_module.FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    index = {name: i for i, name in enumerate(class_names)}
    colors = _class_colors(class_names)
    score_range = _score_range(dets)
    for ax, layout in zip(axes, layouts, strict=False):
        c = index.get(layout.name)
        color = colors.get(layout.name, "#1f77b4")
        header = layout.name
        if video_scores is not None and c is not None and np.isfinite(video_scores[c]):
            header += f"   ·   video score {float(video_scores[c]):.2f}"
        ax.set_title(header, loc="left", fontsize=10.5, fontweight="bold", color=color, pad=3)
        curve = cas_n[c] if cas_n is not None and c is not None else None
        _draw_track(ax, layout, [g for g in gt if g[0] == layout.name], color, score_range, curve, duration)
    if not layouts:
        axes[0].text(0.5, 0.5, "no ground truth and no detections", transform=axes[0].transAxes,
                     ha="center", va="center", fontsize=11, color="#666666")
        axes[0].set_yticks([])
    axes[-1].set_xlim(0.0, duration)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title or _default_title(video_id, gt, dets), fontsize=12, x=0.01, ha="left")
    fig.legend(handles=_legend_handles(patches, lines, cas_n is not None, any(d.alert for d in dets)),
               loc="upper right", ncol=5,
               fontsize=9, frameon=False, bbox_to_anchor=(0.99, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format=out_path.suffix.lstrip(".") or "png")
    return out_path


@dataclass
class _TrackLayout:
    name: str
    lanes: list[list[Detection]]
    with_cas: bool

    @property
    def num_lanes(self) -> int:
        return max(1, len(self.lanes))

    @property
    def cas_top(self) -> float:
        return _CAS_BAND + _GAP if self.with_cas else 0.0

    @property
    def gt_bottom(self) -> float:
        return self.cas_top + self.num_lanes * _BAND + _GAP

    @property
    def height(self) -> float:
        return self.gt_bottom + _BAND


def _track_classes(class_names: Sequence[str], gt: list[tuple[str, float, float]],
                   dets: list[Detection]) -> list[str]:
    """Classes with ground truth or detections, in ``class_names`` order (unknown labels last)."""
    present = {g[0] for g in gt} | {d.label for d in dets}
    ordered = [name for name in class_names if name in present]
    return ordered + sorted(present - set(ordered))


def _lanes(dets: list[Detection]) -> list[list[Detection]]:
    """Stack overlapping detections into lanes: each goes to the first lane where it overlaps nothing."""
    lanes: list[list[Detection]] = []
    lane_ends: list[float] = []
    for det in sorted(dets, key=lambda d: (d.start, -d.score)):
        for i, end in enumerate(lane_ends):
            if det.start >= end:
                lanes[i].append(det)
                lane_ends[i] = det.end
                break
        else:
            lanes.append([det])
            lane_ends.append(det.end)
    return lanes


def _score_range(dets: list[Detection]) -> tuple[float, float]:
    if not dets:
        return 0.0, 1.0
    scores = [d.score for d in dets]
    return min(scores), max(scores)


def _shade(score: float, score_range: tuple[float, float]) -> float:
    """Bar opacity: 0.25 for the video's lowest shown score up to 1.0 for its highest."""
    low, high = score_range
    return 1.0 if high <= low else 0.25 + 0.75 * (score - low) / (high - low)


def _draw_track(ax: Any, layout: _TrackLayout, gt: list[tuple[str, float, float]], color: str,
                score_range: tuple[float, float], curve: np.ndarray | None, duration: float) -> None:
    ticks, tick_labels = [], []
    if layout.with_cas:
        ticks.append(_CAS_BAND / 2)
        tick_labels.append("CAS")
        for _, s, e in gt:
            ax.axvspan(s, e, ymin=0.0, ymax=_CAS_BAND / layout.height, color="#d9d9d9", lw=0, zorder=0)
        if curve is not None:
            x = (np.arange(curve.size) + 0.5) * duration / max(curve.size, 1)
            y = np.clip(curve, 0.0, 1.0) * _CAS_BAND * 0.95
            ax.fill_between(x, 0.0, y, color=color, alpha=_CAS_COLOR_ALPHA, lw=0, zorder=1)
            ax.plot(x, y, color=color, lw=1.3, zorder=2)
        ax.axhline(_CAS_BAND, color="#bbbbbb", lw=0.6)
    for lane_number, lane in enumerate(layout.lanes):
        y = layout.cas_top + lane_number * _BAND + (_BAND - _BAR) / 2
        for det in lane:
            ax.broken_barh([(det.start, max(det.end - det.start, duration * 1e-3))], (y, _BAR), facecolor=color,
                           alpha=_shade(det.score, score_range), zorder=3)
            ax.broken_barh([(det.start, max(det.end - det.start, duration * 1e-3))], (y, _BAR), facecolor="none",
                           edgecolor=_ALERT_EDGE if det.alert else color, lw=_ALERT_LW if det.alert else 0.8,
                           zorder=3)
            if det.end - det.start >= _MIN_LABEL_FRACTION * duration:
                ax.text((det.start + det.end) / 2, y + _BAR / 2, f"{det.score:.2f}", ha="center", va="center",
                        fontsize=7.5, color="black", zorder=4, clip_on=True)
    ticks.append(layout.cas_top + layout.num_lanes * _BAND / 2)
    tick_labels.append("detections" if layout.lanes else "detections (none)")
    gt_y = layout.gt_bottom + (_BAND - _BAR) / 2
    if gt:
        ax.broken_barh([(s, e - s) for _, s, e in gt], (gt_y, _BAR), facecolor=_GT_COLOR, zorder=3)
    ticks.append(layout.gt_bottom + _BAND / 2)
    tick_labels.append("ground truth" if gt else "ground truth (none)")
    ax.set_ylim(0.0, layout.height)
    ax.set_yticks(ticks, tick_labels, fontsize=9)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#e6e6e6", lw=0.7, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend_handles(patches: Any, lines: Any, with_cas: bool, with_alerts: bool = False) -> list[Any]:
    handles = [patches.Patch(facecolor=_GT_COLOR, label="ground truth"),
               patches.Patch(facecolor="#1f77b4", alpha=1.0, label="detection, high score"),
               patches.Patch(facecolor="#1f77b4", alpha=0.3, label="detection, low score")]
    if with_alerts:
        handles.append(patches.Patch(facecolor="#1f77b4", alpha=0.3, edgecolor=_ALERT_EDGE, lw=_ALERT_LW,
                                     label="detection that became an alert"))
    if with_cas:
        handles.append(lines.Line2D([], [], color="#1f77b4", lw=1.3, label="CAS (normalized, 0–1)"))
    return handles


def _default_title(video_id: str, gt: list[tuple[str, float, float]], dets: list[Detection]) -> str:
    return f"{video_id}: {len(gt)} ground-truth segment{'s' * (len(gt) != 1)}, " \
           f"{len(dets)} detection{'s' * (len(dets) != 1)}"


def _class_colors(class_names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per class index (tab10, then tab20), so a class looks the same in every plot."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
               "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
    return {name: palette[i % len(palette)] for i, name in enumerate(class_names)}


def _matplotlib() -> tuple[Any, Any, Any, Any]:
    try:
        from matplotlib import figure, lines, patches
        from matplotlib.backends import backend_agg
    except ImportError:
        raise MissingDependencyError("matplotlib", "plots (ecm-edge viz)",
                                     "install it with: pip install 'ecm-edge[plot]'") from None
    return figure, backend_agg, patches, lines
