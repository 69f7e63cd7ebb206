"""Which detections become alerts: the operating point of each class, a minimum duration and a cooldown.

A ``segment`` event is a detection; every one is kept (files, mAP). An operator's channel wants alerts whose
false-alarm rate is known. ``ecm-edge calibrate`` picks per class the lowest score at which the held-out
precision reaches a target and stores it beside the model (``ecm_edge.operating_points``); a segment scoring at
least its class's point, lasting at least ``alerts.min_duration_s``, and starting more than ``alerts.cooldown_s``
after the end of the previous alert of its source and class also produces an ``alert`` event (the segment rides
along). Segments inside the cooldown merge into that alert: they extend the window the cooldown counts from, so a
long action that the stream reports as several segments alerts once.

``alerts.min_score`` > 0 overrides the calibrated points with one score for every class (a site without
held-out data); without calibrated points and without ``alerts.min_score`` nothing alerts, and the engine says so
once when it starts.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ecm_edge.config import AlertsConfig
from ecm_edge.runtime import events as ev

log = logging.getLogger("ecm_edge")


class PointsByClass(Protocol):
    """Operating points by class label (``ecm_edge.operating_points.OperatingPoints``)."""

    def min_score(self, label: str) -> float: ...


class AlertPolicy:
    """One source's alert rule: its classes' operating points and, per class, where its cooldown ends."""

    def __init__(self, config: AlertsConfig, points: PointsByClass | None):
        self.config, self.points = config, points
        self._last_end: dict[int, float] = {}  # per class: end of the latest alert or segment merged into it
        self.merged = 0  # segments that passed the operating point but fell into a cooldown

    @property
    def active(self) -> bool:
        """Whether any segment can alert (enabled, and some operating point to alert at)."""
        return self.config.enabled and (self.config.min_score > 0 or self.points is not None)

    def min_score(self, label: str) -> float | None:
        """The class's operating point: ``alerts.min_score`` when set, else the calibrated one, else None."""
        if self.config.min_score > 0:
            return self.config.min_score
        return None if self.points is None else self.points.min_score(label)

    def consider(self, segment: ev.Event) -> ev.Event | None:
        """The ``alert`` event ``segment`` produces, or None (below its point, too short, or merged)."""
        if not self.config.enabled or segment["type"] != ev.SEGMENT:
            return None
        point = self.min_score(segment["label"])
        if point is None or segment["score"] < point:
            return None
        if segment["end"] - segment["start"] < self.config.min_duration_s:
            return None
        cls = segment["class"]
        last = self._last_end.get(cls)
        if last is not None and segment["start"] <= last + self.config.cooldown_s:
            self._last_end[cls] = max(last, segment["end"])
            self.merged += 1
            return None
        self._last_end[cls] = segment["end"]
        return ev.alert_event(segment, point)


def with_alerts(events: list[ev.Event], policy: AlertPolicy) -> list[ev.Event]:
    """``events`` with each alert right after the segment that produced it."""
    if not policy.active:
        return events
    out: list[ev.Event] = []
    for event in events:
        out.append(event)
        alert = policy.consider(event)
        if alert is not None:
            out.append(alert)
    return out

