"""The embedding API: ``run`` yields typed events as they happen, for one source (Localizer) and many
(StreamEngine); the root package exports what an embedder needs; typed events read and compare like their JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stream_helpers import D, assert_same_events

import ecm_edge
from ecm_edge.runtime import events as ev

OVERRIDES = ("post.class_threshold=0.0", "stream.horizon=64", "stream.warmup=8")


def comparable(events) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("emitted_at", "latency", "id", "source")}
            for e in events if e["type"] not in ("stats",)]


def test_the_root_package_exports_what_an_embedder_needs():
    for name in ecm_edge.__all__:
        assert getattr(ecm_edge, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ecm_edge.Nope  # noqa: B018


def test_localizer_run_yields_the_events_of_pushing_the_file(stream_run, stream_features):
    localizer = ecm_edge.Localizer.from_artifacts(stream_run, overrides=OVERRIDES, source="cam")
    got = list(localizer.run(stream_features, realtime=False))
    assert got and all(isinstance(e, ecm_edge.Event) and e.source == "cam" for e in got)
    segments = [e for e in got if isinstance(e, ecm_edge.Segment)]
    assert segments and all(0 <= s.start < s.end for s in segments)
    pushed = ecm_edge.Localizer.from_artifacts(stream_run, overrides=OVERRIDES)
    features = np.load(stream_features)
    expected = [e for row in features for e in pushed.push_features(row)] + pushed.flush()
    pushed.close()
    assert_same_events(comparable(got), comparable(expected))


def test_engine_run_serves_several_files_with_ids_from_their_names(stream_run, stream_features, tmp_path):
    other = tmp_path / "yard.npy"
    np.save(other, np.random.default_rng(7).normal(size=(90, D)).astype(np.float32))
    engine = ecm_edge.StreamEngine.from_artifacts(stream_run, overrides=OVERRIDES)
    seen = []
    engine.on_event(seen.append)
    got = list(engine.run([stream_features, other, other], realtime=False))
    sources = {e.source for e in got if e.type == "segment"}
    assert sources == {stream_features.stem, "yard", "yard-2"}
    by_source = {s: comparable(e for e in got if e.source == s) for s in sources}
    assert by_source["yard"] == by_source["yard-2"]  # the same file twice: the same events
    assert seen == got  # the sinks got the same events (the writer thread has delivered them all at close)


def test_typed_events_read_and_compare_like_their_json():
    segment = ev.segment_event(2, "jump", 1.23456, 4.0, 0.876543, latency=0.5, emitted_at=10.0)
    segment.source = "gate"
    wire = {"type": "segment", "class": 2, "label": "jump", "start": 1.235, "end": 4.0, "score": 0.87654,
            "emitted_at": 10.0, "latency": 0.5, "source": "gate"}
    assert segment.to_dict() == wire and segment == wire and wire == segment
    assert segment["class"] == segment.class_id == 2 and segment.get("missing") is None
    assert json.loads(ev.to_json_line(segment)) == wire
    assert ev.with_id(segment)["id"] and "id" not in segment
    lost = ev.SourceLost("camera unplugged", None, source="gate")
    assert lost.to_dict() == {"type": "source_lost", "reason": "camera unplugged", "retry_in_s": None,
                              "source": "gate"}
    alert = ev.alert_event(segment, 0.5, emitted_at=11.0)
    assert alert.segment == wire and alert.source == "gate" and alert["min_score"] == 0.5
