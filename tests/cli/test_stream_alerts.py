"""``ecm-edge stream`` with alerts: an operator's MQTT channel carries the alerts of every source, the file keeps
every detection; sinks choose their event types. A real broker (amqtt) on 127.0.0.1, the CLI as a subprocess."""

from __future__ import annotations

import json

import numpy as np
from mqtt_broker import AVAILABILITY, PREFIX, LocalBroker, wait_for
from stream_helpers import KEEP_ALL, D, run_stream


def test_alerts_of_every_source_go_to_mqtt_and_every_detection_to_the_file(stream_run, stream_features, tmp_path):
    np.save(tmp_path / "yard.npy", np.random.default_rng(5).normal(size=(100, D)).astype(np.float32) * 2)
    broker = LocalBroker().start()
    try:
        done = run_stream("--features", str(stream_features), "--features", str(tmp_path / "yard.npy"),
                          "--artifacts", str(stream_run), "--no-realtime", *KEEP_ALL,
                          "--set", "alerts.min_score=0.3", "--set", "alerts.cooldown_s=5",
                          "--out", str(tmp_path / "all.jsonl"),
                          "--mqtt", broker.url, "--mqtt-events", "alert", "--mqtt-spool", str(tmp_path / "spool"))
        assert done.returncode == 0, done.stderr
        events = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
        alerts = [e for e in events if e["type"] == "alert"]
        assert alerts and {e["source"] for e in alerts} == {"video", "yard"}
        assert all(a["score"] >= 0.3 and a["min_score"] == 0.3 for a in alerts)
        assert any(e["type"] == "segment" and e["score"] < 0.3 for e in events)  # detections below stay in the file
        wait_for(lambda: len([t for t, _ in broker.received if t != AVAILABILITY]) >= len(alerts))
        published = [(topic, json.loads(payload)) for topic, payload in broker.received if topic != AVAILABILITY]
        assert [topic for topic, _ in published] == [f"{PREFIX}/{a['source']}/alert" for a in alerts]
        assert [payload for _, payload in published] == alerts  # the same JSON, id included, once each
    finally:
        broker.stop()


def test_an_unknown_event_type_is_one_line_and_exit_1(stream_run, stream_features):
    done = run_stream("--features", str(stream_features), "--artifacts", str(stream_run), "--out-events", "segmnt")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and "segmnt" in done.stderr and "segment" in done.stderr
