"""The MQTT sink against a real broker (amqtt) started on 127.0.0.1 by the tests, a free port per test."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import pytest
from mqtt_broker import AVAILABILITY, PREFIX, WAIT_S, LocalBroker, Subscriber, wait_for

from ecm_edge.errors import ConfigError, EcmEdgeError
from ecm_edge.runtime.events import segment_event, stats_event
from ecm_edge.runtime.mqtt import MqttSink, event_topic, parse_mqtt_url, sink_from_url, topic_level
from ecm_edge.runtime.sinks import EventDispatcher, JsonlSink

FAST = dict(backoff_s=0.05, backoff_max_s=0.2, connect_timeout_s=2.0, close_timeout_s=5.0)


@pytest.fixture
def broker():
    running = LocalBroker().start()
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    yield running
    running.stop()


def events(n: int, first: int = 0, sources=("front door", "yard")) -> list[dict]:
    return [{**segment_event(i % 3, f"class{i % 3}", i, i + 1.5, 0.5, latency=1.0), "seq": i,
             "source": sources[i % len(sources)]} for i in range(first, first + n)]


def delivered(records: list[tuple[str, bytes]]) -> list[tuple[str, dict]]:
    """The events among a broker's records (availability left out)."""
    return [(topic, json.loads(data)) for topic, data in records if topic != AVAILABILITY]


# -- delivery ------------------------------------------------------------------------------------------------
def test_every_event_arrives_once_on_its_topic_with_the_jsonl_payload(broker, tmp_path):
    subscriber = Subscriber(broker.port)
    try:
        sent = [*events(6), {"type": "source_lost", "source": "cam/1+#"}, dict(stats_event(25.0, 10, 0, 1.0, 2.0))]
        sink = MqttSink(broker.url, tmp_path / "spool.jsonl", **FAST)
        dispatcher = EventDispatcher([JsonlSink(tmp_path / "events.jsonl"), sink])
        dispatcher.publish(sent)
        dispatcher.close()
        wait_for(lambda: len(subscriber.events()) == len(sent))
        time.sleep(0.05)  # nothing more (a repeat) comes
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        payloads = [payload.decode() for topic, payload, _ in subscriber.messages if topic != AVAILABILITY]
        assert payloads == lines  # the JSONL sink's lines, ids included, each exactly once
        topics = [topic for topic, _ in subscriber.events()]
        assert topics == [f"{PREFIX}/{'front door' if i % 2 == 0 else 'yard'}/segment" for i in range(6)] + [
            f"{PREFIX}/cam_1__/source_lost", f"{PREFIX}/stats"]
        assert not any(retained for topic, _, retained in subscriber.messages if topic != AVAILABILITY)
        assert subscriber.availability() == [("online", False), ("offline", False)]
        assert sink.delivered == len(sent) and sink.loss() is None and not (tmp_path / "spool.jsonl").exists()
    finally:
        subscriber.close()


def test_availability_is_retained_online_then_offline_after_close(broker, tmp_path):
    watcher = Subscriber(broker.port, AVAILABILITY)
    sink = MqttSink(broker.url, tmp_path / "spool.jsonl", **FAST)
    try:
        wait_for(lambda: watcher.availability() == [("online", False)])  # seen live: the broker retains it
        assert retained_state(broker.port) == "online"
        sink.close()
        wait_for(lambda: watcher.availability() == [("online", False), ("offline", False)])
    finally:
        sink.close()
        watcher.close()
    assert retained_state(broker.port) == "offline"


def retained_state(port: int) -> str:
    """What a new subscriber of the availability topic gets: the retained state (the broker may send it twice,
    as QoS 1 allows)."""
    late = Subscriber(port, AVAILABILITY)
    try:
        wait_for(lambda: late.availability())
        time.sleep(0.05)
        states = set(late.availability())
        assert len(states) == 1, states
        state, retained = states.pop()
        assert retained
        return state
    finally:
        late.close()


SINK_PROCESS = """
import sys, time
from ecm_edge.runtime.mqtt import MqttSink
sink = MqttSink(sys.argv[1], sys.argv[2])
print("connected" if sink.connected else "down", flush=True)
time.sleep(60)
"""


def test_last_will_says_offline_when_the_process_holding_the_sink_dies(broker, tmp_path):
    subscriber = Subscriber(broker.port, AVAILABILITY)
    process = subprocess.Popen([sys.executable, "-c", SINK_PROCESS, broker.url, str(tmp_path / "spool.jsonl")],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "connected"
        wait_for(lambda: subscriber.availability() == [("online", False)])
        process.send_signal(signal.SIGKILL)
        process.wait(WAIT_S)
        wait_for(lambda: subscriber.availability() == [("online", False), ("offline", False)])
    finally:
        process.kill()
        process.wait()
        subscriber.close()
    assert retained_state(broker.port) == "offline"


# -- outages -------------------------------------------------------------------------------------------------
def test_broker_stopped_mid_stream_and_restarted_loses_nothing_and_keeps_the_order(broker, tmp_path):
    spool = tmp_path / "spool.jsonl"
    sink = MqttSink(broker.url, spool, **FAST)
    try:
        for event in events(10):
            sink.write(event)
        wait_for(lambda: sink.delivered == 10)
        broker.stop()
        wait_for(lambda: not sink.connected)
        for event in events(20, first=10):
            sink.write(event)
        wait_for(lambda: sink.spool_size() == 20)  # kept on disk while the broker is away
        broker.start()
        for event in events(10, first=30):
            sink.write(event)
        wait_for(lambda: sink.delivered == 40)
    finally:
        sink.close()
    received = delivered(broker.received)
    assert sorted(event["seq"] for _, event in received) == list(range(40))  # each exactly once
    for source in ("front door", "yard"):  # and in order on each topic
        seqs = [event["seq"] for topic, event in received if topic == f"{PREFIX}/{source}/segment"]
        assert seqs == sorted(seqs)
    assert not spool.exists() and sink.loss() is None


def test_broker_down_at_start_starts_anyway_and_delivers_once_it_is_up(tmp_path, caplog):
    later = LocalBroker()
    spool = tmp_path / "spool.jsonl"
    with caplog.at_level(logging.WARNING, logger="ecm_edge"):
        sink = MqttSink(later.url, spool, **FAST)
    assert "cannot be reached" in caplog.text and "starting anyway" in caplog.text and str(spool) in caplog.text
    try:
        for event in events(5):
            sink.write(event)
        wait_for(lambda: sink.spool_size() == 5)
        later.start()
        wait_for(lambda: sink.delivered == 5)
        sink.close()
        assert [event["seq"] for _, event in delivered(later.received)] == list(range(5))
        assert not spool.exists()
    finally:
        sink.close()
        later.stop()


def test_closed_while_down_keeps_everything_for_the_next_run(tmp_path):
    spool = tmp_path / "spool.jsonl"
    later = LocalBroker()
    first = MqttSink(later.url, spool, **FAST)
    for event in events(8):
        first.write(event)
    first.close(timeout_s=0.3)
    assert first.spool_size() == 8 and first.loss() is None
    assert [json.loads(line)["seq"] for line in spool.read_text().splitlines()] == list(range(8))
    later.start()
    try:
        with MqttSink(later.url, spool, **FAST) as second:
            for event in events(2, first=8):
                second.write(event)
        assert [event["seq"] for _, event in delivered(later.received)] == list(range(10))
        assert not spool.exists()
    finally:
        later.stop()


# -- login ---------------------------------------------------------------------------------------------------
@pytest.fixture
def password_broker(tmp_path):
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    passwords = tmp_path / "passwords"
    passwords.write_text(f"camera:{PasswordHash((Argon2Hasher(),)).hash('right')}\n")
    running = LocalBroker(passwords=str(passwords)).start()
    yield running
    running.stop()


def test_wrong_password_is_a_clear_error_at_start(password_broker, tmp_path):
    url = f"mqtt://camera:wrong@127.0.0.1:{password_broker.port}/{PREFIX}"
    with pytest.raises(EcmEdgeError) as caught:
        MqttSink(url, tmp_path / "spool.jsonl", **FAST)
    message = str(caught.value)
    assert f"mqtt://127.0.0.1:{password_broker.port}/{PREFIX}" in message and "wrong" not in message
    assert "refused" in message and "'camera'" in message and "check the user name and password" in message


def test_the_right_password_from_the_options_gets_in(password_broker, tmp_path):
    with MqttSink(password_broker.url, tmp_path / "spool.jsonl", username="camera", password="right",
                  **FAST) as sink:
        sink.write(events(1)[0])
    assert [event["seq"] for _, event in delivered(password_broker.received)] == [0]


# -- event types -----------------------------------------------------------------------------------------------
def test_an_alert_only_sink_gets_only_alerts(broker, tmp_path):
    subscriber = Subscriber(broker.port)
    try:
        segment = events(1)[0]
        alert = {"type": "alert", "source": "yard", "class": 0, "label": "class0", "start": 0.0, "end": 1.5,
                 "score": 0.5, "segment": segment, "emitted_at": 1.0}
        sink = sink_from_url(broker.url, spool=tmp_path / "spool.jsonl", events="alert", **FAST)
        dispatcher = EventDispatcher([sink])
        dispatcher.publish([segment, alert, dict(stats_event(25.0, 1, 0, 1.0, 2.0)), alert])
        dispatcher.close()
        wait_for(lambda: len(subscriber.events()) == 2)
        time.sleep(0.05)
        assert [topic for topic, _ in subscriber.events()] == [f"{PREFIX}/yard/alert"] * 2
        assert subscriber.events()[0][1]["segment"] == segment
    finally:
        subscriber.close()


# -- URLs and topics -------------------------------------------------------------------------------------------
def test_urls_give_broker_port_tls_prefix_and_login():
    target = parse_mqtt_url("mqtts://user:p%40ss@broker.local/site/cams")
    assert (target.host, target.port, target.tls, target.prefix) == ("broker.local", 8883, True, "site/cams")
    assert (target.username, target.password) == ("user", "p@ss")
    assert target.where == "mqtts://broker.local:8883/site/cams"  # no password in messages
    plain = parse_mqtt_url("mqtt://10.0.0.2")
    assert (plain.port, plain.tls, plain.prefix, plain.username) == (1883, False, "ecm-edge", None)


@pytest.mark.parametrize("url, words", [("http://broker/x", "mqtt://"), ("mqtt:///cams", "no broker host"),
                                        ("mqtt://broker/a/+/b", "wildcards"), ("mqtt://broker/$SYS", "start with $"),
                                        ("mqtt://broker:99999/x", "port")])
def test_bad_urls_say_what_is_wrong(url, words, tmp_path):
    with pytest.raises(ConfigError, match=words.replace("$", r"\$").replace("+", r"\+")):
        MqttSink(url, tmp_path / "spool.jsonl")


def test_tls_options_need_an_mqtts_url_and_readable_files(tmp_path):
    with pytest.raises(ConfigError, match="mqtts://"):
        MqttSink("mqtt://127.0.0.1/x", tmp_path / "spool.jsonl", insecure=True)
    with pytest.raises(ConfigError, match="CA file"):
        MqttSink("mqtts://127.0.0.1/x", tmp_path / "spool.jsonl", ca_file=tmp_path / "missing.pem")


def test_source_ids_become_single_topic_levels():
    assert topic_level("a/b+c#d") == "a_b_c_d" and topic_level("") == "_"
    assert event_topic("p", {"type": "segment", "source": "*"}) == "p/*/segment"
    assert event_topic("p", {"type": "stats"}) == "p/stats"
