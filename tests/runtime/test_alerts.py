"""Alerts: which segments reach their class's operating point, the minimum duration, the cooldown that merges
repeats per source and class; the engine emits each alert right after its segment, with per-source overrides."""

from __future__ import annotations

import shutil

import numpy as np
from stream_helpers import D

from ecm_edge.config import AlertsConfig
from ecm_edge.operating_points import ClassPoint, OperatingPoints, write_operating_points
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.alerts import AlertPolicy, with_alerts
from ecm_edge.runtime.engine import StreamEngine

OVERRIDES = ("post.class_threshold=0.0", "stream.horizon=64", "stream.warmup=8")


def points(per_class: dict[str, float], global_min_score: float = 0.9) -> OperatingPoints:
    classes = {label: ClassPoint(label, score, True, 10, 0.8, 0.5) for label, score in per_class.items()}
    return OperatingPoints(target_precision=0.8, tiou=0.5, split="val", global_min_score=global_min_score,
                           classes=classes)


def segment(cls: int, label: str, start: float, end: float, score: float) -> ev.Event:
    return ev.segment_event(cls, label, start, end, score, latency=0.0)


def test_a_segment_alerts_at_its_class_point_not_below():
    policy = AlertPolicy(AlertsConfig(cooldown_s=0.0), points({"run": 0.5}))
    assert policy.consider(segment(0, "run", 0, 2, 0.49)) is None
    alert = policy.consider(segment(0, "run", 5, 7, 0.5))
    assert alert["type"] == "alert" and alert["min_score"] == 0.5 and alert["segment"]["start"] == 5
    assert policy.consider(segment(1, "jump", 9, 12, 0.8)) is None  # the global point, 0.9
    assert policy.consider(segment(1, "jump", 20, 22, 0.95))["min_score"] == 0.9


def test_short_segments_and_repeats_inside_the_cooldown_do_not_alert():
    policy = AlertPolicy(AlertsConfig(min_duration_s=1.0, cooldown_s=10.0), points({"run": 0.5}))
    assert policy.consider(segment(0, "run", 0.0, 0.5, 0.9)) is None  # too short
    assert policy.consider(segment(0, "run", 1.0, 3.0, 0.9)) is not None
    assert policy.consider(segment(0, "run", 12.0, 14.0, 0.9)) is None  # starts 9 s after the alert's end
    assert policy.consider(segment(0, "run", 23.0, 25.0, 0.9)) is None  # 9 s after the merged segment's end
    assert policy.consider(segment(0, "run", 36.0, 38.0, 0.9)) is not None  # 11 s after: a new alert
    assert policy.merged == 2


def test_without_points_nothing_alerts_unless_a_global_score_is_set():
    seg = segment(0, "run", 0, 2, 0.99)
    assert with_alerts([seg], AlertPolicy(AlertsConfig(), None)) == [seg]
    assert with_alerts([seg], AlertPolicy(AlertsConfig(enabled=False), points({"run": 0.1}))) == [seg]
    out = with_alerts([seg], AlertPolicy(AlertsConfig(min_score=0.95), None))
    assert [e["type"] for e in out] == ["segment", "alert"]


def test_the_engine_alerts_per_source_after_the_segment(stream_run, tmp_path):
    """Calibrated points beside the model: each source's alerts follow their segments; a source with its own
    ``alerts.enabled=false`` gets none; the events otherwise equal those of an engine without points."""
    folder = tmp_path / "run"
    shutil.copytree(stream_run, folder)
    write_operating_points(folder, points({}, global_min_score=0.0))  # every segment reaches the point
    engine = StreamEngine.from_artifacts(folder, overrides=(*OVERRIDES, "alerts.cooldown_s=0"))
    plain = StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    engine.add_stream("gate")
    engine.add_stream("lobby", overrides=["alerts.enabled=false"])
    plain.add_stream("gate")
    x = np.random.default_rng(3).normal(size=(60, D)).astype(np.float32)
    x[15:35] += 3.0
    events, expected = [], []
    for at in range(0, 60, 20):
        for source in ("gate", "lobby"):
            engine.push(source, x[at:at + 20])
        plain.push("gate", x[at:at + 20])
        events += engine.step()
        expected += plain.step()
    events += engine.close()
    expected += plain.close()
    gate = [e for e in events if e["source"] == "gate" and e["type"] != "stats"]
    segments = [e for e in gate if e["type"] == "segment"]
    alerts = [(i, e) for i, e in enumerate(gate) if e["type"] == "alert"]
    assert segments and alerts
    for i, alert in alerts:  # right after its segment
        assert gate[i - 1]["type"] == "segment" and alert["segment"] == gate[i - 1] and alert["source"] == "gate"
    reach: dict[int, float] = {}  # per class, the end of the latest alert or segment merged into it
    for i, seg in enumerate(gate):
        if seg["type"] != "segment":
            continue
        alerted = i + 1 < len(gate) and gate[i + 1]["type"] == "alert"
        merged = seg["class"] in reach and seg["start"] <= reach[seg["class"]]  # cooldown 0: overlaps merge
        assert alerted != merged, seg
        reach[seg["class"]] = max(reach.get(seg["class"], seg["end"]), seg["end"])
    assert not [e for e in events if e["source"] == "lobby" and e["type"] == "alert"]
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("emitted_at", "latency")}  # noqa: E731
                        for e in es if e["type"] == "segment"]
    assert strip(segments) == strip(expected)
