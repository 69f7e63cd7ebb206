"""Event sinks against real files, real stdout and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ecm_edge.errors import ConfigError
from ecm_edge.runtime.events import segment_event, to_json_line
from ecm_edge.runtime.sinks import (
    CallbackSink,
    EventDispatcher,
    JsonlSink,
    Sink,
    Spool,
    WebhookSink,
    parse_event_types,
)

FAST = dict(timeout_s=2.0, retries=3, backoff_s=0.02, backoff_max_s=0.1)


def events(n: int, first: int = 0) -> list[dict]:
    return [{**segment_event(i % 3, f"class{i % 3}", i, i + 1.5, 0.5, latency=1.0), "seq": i}
            for i in range(first, first + n)]


class Receiver:
    """An HTTP webhook receiver: 503 to its first ``fail_first`` requests and to those after ``fail_after``, else
    200; ``stall_first_s`` holds the first request that long after reading it (a client timing out)."""

    def __init__(self, port: int = 0, fail_first: int = 0, delay_s: float = 0.0, fail_after: int | None = None,
                 stall_first_s: float = 0.0):
        self.received: list[dict] = []
        self.keys: list[str | None] = []  # Idempotency-Key of every request, answered or not
        self.requests = 0
        self.fail_first, self.delay_s, self.fail_after = fail_first, delay_s, fail_after
        self.stall_first_s = stall_first_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.keys.append(self.headers.get("Idempotency-Key"))
                time.sleep(receiver.delay_s)
                receiver.requests += 1
                if receiver.requests == 1 and receiver.stall_first_s:
                    receiver.received.append(json.loads(body))  # taken, but the answer comes too late
                    time.sleep(receiver.stall_first_s)
                    return
                failing = receiver.fail_after is not None and receiver.requests > receiver.fail_after
                if receiver.requests <= receiver.fail_first or failing:
                    self.send_response(503)
                else:
                    receiver.received.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def seqs(items: list[dict]) -> list[int]:
    return [item["seq"] for item in items]


def test_webhook_retries_through_a_receiver_that_fails_for_a_while(tmp_path):
    receiver = Receiver(fail_first=2)
    try:
        with WebhookSink(receiver.url, tmp_path / "spool.jsonl", **FAST) as sink:
            for event in events(5):
                sink.write(event)
        assert seqs(receiver.received) == [0, 1, 2, 3, 4]
        assert sink.spooled == 0 and not (tmp_path / "spool.jsonl").exists()
    finally:
        receiver.stop()


def test_webhook_spools_while_down_and_resends_first_when_back(tmp_path):
    port, spool = free_port(), tmp_path / "spool.jsonl"
    sink = WebhookSink(f"http://127.0.0.1:{port}/events", spool, **FAST)
    for event in events(4):
        sink.write(event)
    wait_for(lambda: sink.spooled == 4)
    assert [json.loads(line)["seq"] for line in spool.read_text().splitlines()] == [0, 1, 2, 3]
    receiver = Receiver(port=port)
    try:
        wait_for(lambda: len(receiver.received) == 4)  # re-sent without waiting for a new event
        for event in events(3, first=4):
            sink.write(event)
        sink.close()
        assert seqs(receiver.received) == list(range(7))
        assert not spool.exists() and sink.delivered == 7
    finally:
        receiver.stop()


def test_webhook_never_drops_events_when_closed_while_down(tmp_path):
    spool = tmp_path / "spool.jsonl"
    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/events", spool, **FAST)
    sent = events(20)
    for event in sent:
        sink.write(event)
    sink.close()
    assert [json.loads(line)["seq"] for line in spool.read_text().splitlines()] == list(range(20))
    assert sink.spool_size() == 20 and sink.delivered == 0


def test_webhook_full_queue_goes_to_the_spool(tmp_path):
    receiver = Receiver(delay_s=0.05)
    try:
        spool = tmp_path / "spool.jsonl"
        sink = WebhookSink(receiver.url, spool, queue_size=2, **FAST)
        for event in events(12):
            sink.write(event)
        assert sink.spooled > 0  # the writer could not keep up with a 50 ms receiver
        sink.close()
        assert sorted(seqs(receiver.received)) == list(range(12))  # everything arrived, spooled ones included
    finally:
        receiver.stop()


def test_spool_left_by_an_earlier_run_is_sent_before_new_events(tmp_path):
    spool = tmp_path / "spool.jsonl"
    spool.write_text("".join(to_json_line(e) for e in events(3)))
    receiver = Receiver()
    try:
        with WebhookSink(receiver.url, spool, **FAST) as sink:
            for event in events(2, first=3):
                sink.write(event)
        assert seqs(receiver.received) == [0, 1, 2, 3, 4]
        assert not spool.exists()
    finally:
        receiver.stop()


def test_webhook_rejects_a_non_http_url(tmp_path):
    with pytest.raises(ConfigError, match="http"):
        WebhookSink("ftp://example/x", tmp_path / "s.jsonl")


def test_jsonl_file_is_flushed_per_event(tmp_path):
    path = tmp_path / "out" / "events.jsonl"
    with JsonlSink(path) as sink:
        for i, event in enumerate(events(3)):
            sink.write(event)
            lines = path.read_text().splitlines()  # visible before close
            assert len(lines) == i + 1 and json.loads(lines[-1])["seq"] == i


def test_jsonl_stdout(capsys):
    with JsonlSink("-") as sink:
        sink.write(events(1)[0])
    line = capsys.readouterr().out
    assert line.endswith("\n") and json.loads(line)["type"] == "segment"


def test_failing_callback_is_logged_and_the_stream_goes_on(caplog):
    seen: list[int] = []

    def flaky(event):
        if event["seq"] == 1:
            raise RuntimeError("boom")
        seen.append(event["seq"])

    dispatcher = EventDispatcher([CallbackSink(flaky)])
    with caplog.at_level(logging.ERROR, logger="ecm_edge"):
        dispatcher.publish(events(4))
        dispatcher.close()
    assert seen == [0, 2, 3]
    assert "boom" in caplog.text and "stream goes on" in caplog.text


class BrokenSink(Sink):
    def write(self, event):
        raise OSError("disk full")


def test_dispatcher_isolates_a_broken_sink(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    dispatcher = EventDispatcher([BrokenSink(), JsonlSink(path)], queue_size=2)
    with caplog.at_level(logging.ERROR, logger="ecm_edge"):
        dispatcher.publish(events(10))
        dispatcher.drain()
        assert len(path.read_text().splitlines()) == 10
        dispatcher.close()
    assert "disk full" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        dispatcher.publish(events(1))


def test_event_lines_are_compact_valid_json():
    event = segment_event(1, "jump", 1.23456, 2.5, float("nan"), latency=0.5)
    line = to_json_line(event)
    assert line.endswith("\n") and "\n" not in line[:-1]
    parsed = json.loads(line)
    assert parsed["score"] is None and parsed["start"] == 1.235 and parsed["type"] == "segment"


def test_step_stats_percentiles_and_rate():
    from ecm_edge.runtime.events import StepStats

    stats = StepStats()
    stats.record(0.002, 90, 90 * 16)
    stats.record(0.050, 10, 10 * 16)
    time.sleep(0.01)
    event = stats.event(dropped_frames=3)
    assert event["type"] == "stats" and event["snippets"] == 100 and event["dropped_frames"] == 3
    assert event["step_ms_p50"] == pytest.approx(2.0) and event["step_ms_p99"] == pytest.approx(50.0)
    assert 0 < event["fps"] < 1600 / 0.01


def spool_seqs(path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def test_spool_is_resent_from_an_offset_and_only_the_rest_is_kept(tmp_path):
    spool = tmp_path / "spool.jsonl"
    spool.write_text("".join(to_json_line(e) for e in events(5)))
    receiver = Receiver(fail_after=2)
    try:
        sink = WebhookSink(receiver.url, spool, **FAST)
        wait_for(lambda: receiver.requests >= 3)  # two accepted, then the receiver fails
        sink.close(timeout_s=0.2)
        assert seqs(receiver.received) == [0, 1]
        assert spool_seqs(spool) == [2, 3, 4]  # the delivered part was cut off, nothing sent twice
        assert sink.delivered == 2 and sink.dropped == 0 and sink.loss() is None
    finally:
        receiver.stop()


def test_spool_reader_skips_a_damaged_line_instead_of_sticking_on_it(tmp_path):
    spool = tmp_path / "spool.jsonl"
    lines = [to_json_line(e) for e in events(3)]
    spool.write_text(lines[0] + '{"seq": 1, "truncat\n' + lines[2])
    receiver = Receiver()
    try:
        with WebhookSink(receiver.url, spool, **FAST):
            wait_for(lambda: len(receiver.received) == 2)
        assert seqs(receiver.received) == [0, 2] and not spool.exists()
    finally:
        receiver.stop()


def test_unwritable_spool_holds_a_bounded_backlog_and_counts_what_it_drops():
    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/events", "/dev/full", memory_events=5, **FAST)
    for event in events(12):
        sink.write(event)
    wait_for(lambda: sink.dropped == 7)  # the 5 newest wait in memory, the 7 oldest are gone
    assert sink.spool_size() == 5 and sink.spooled == 0
    sink.close(timeout_s=0.2)
    assert sink.dropped == 12  # the backlog could not be written at close either
    assert str(sink.loss()) == (f"12 events neither delivered to {sink.url} nor spooled to /dev/full "
                                "(No space left on device)")


def test_spool_backlog_goes_to_the_file_in_order_once_it_can_be_written(tmp_path):
    blocker = tmp_path / "spool"
    blocker.mkdir()  # a directory where the spool file should be: it cannot be written
    spool = Spool(blocker, memory_events=10)
    spool.append([to_json_line(e).encode() for e in events(3)])
    assert spool.written == 0 and spool.count() == 3 and spool.error
    blocker.rmdir()
    spool.append([to_json_line(e).encode() for e in events(2, first=3)])
    assert spool.written == 5 and spool_seqs(blocker) == [0, 1, 2, 3, 4]
    assert spool.close() == 0 and spool.dropped == 0


def test_events_carry_an_id_sent_as_idempotency_key(tmp_path):
    receiver = Receiver()
    try:
        with WebhookSink(receiver.url, tmp_path / "spool.jsonl", **FAST) as sink:
            for event in events(3):
                sink.write(event)
        ids = [e["id"] for e in receiver.received]
        assert len(set(ids)) == 3 and receiver.keys == ids
    finally:
        receiver.stop()


def test_an_event_resent_after_a_timeout_keeps_its_id(tmp_path):
    receiver = Receiver(stall_first_s=0.8)
    try:
        with WebhookSink(receiver.url, tmp_path / "spool.jsonl", **{**FAST, "timeout_s": 0.3}) as sink:
            sink.write(events(1)[0])
        assert [e["seq"] for e in receiver.received] == [0, 0]  # the receiver got it twice ...
        first, second = receiver.received
        assert first == second and receiver.keys == [first["id"]] * 2  # ... and can tell it is a repeat
    finally:
        receiver.stop()


def test_a_spooled_event_without_id_keeps_one_key_across_resends(tmp_path):
    spool = tmp_path / "spool.jsonl"
    spool.write_text(to_json_line(events(1)[0]))  # a spool of an older version: no ids
    receiver = Receiver(fail_first=1)
    try:
        with WebhookSink(receiver.url, spool, **FAST):
            wait_for(lambda: len(receiver.received) == 1)
        assert len(receiver.keys) == 2 and receiver.keys[0] == receiver.keys[1]
        assert receiver.keys[0].startswith("sha256-")
    finally:
        receiver.stop()


def test_dispatcher_gives_wire_sinks_one_id_per_event_and_callbacks_the_plain_event(tmp_path):
    path, seen = tmp_path / "events.jsonl", []
    dispatcher = EventDispatcher([JsonlSink(path), JsonlSink(tmp_path / "copy.jsonl"), CallbackSink(seen.append)])
    sent = events(4)
    dispatcher.publish(sent)
    dispatcher.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    copies = [json.loads(line) for line in (tmp_path / "copy.jsonl").read_text().splitlines()]
    assert [e["id"] for e in lines] == [e["id"] for e in copies] and len({e["id"] for e in lines}) == 4
    assert [{k: v for k, v in e.items() if k != "id"} for e in lines] == json.loads(json.dumps(sent))
    assert seen == sent and all("id" not in e for e in seen)


def test_jsonl_on_a_full_disk_counts_the_lost_events_without_raising(caplog):
    with caplog.at_level(logging.ERROR, logger="ecm_edge"), JsonlSink("/dev/full") as sink:
        for event in events(3):
            sink.write(event)
    assert sink.lost == 3 and sink.written == 0
    assert str(sink.loss()) == "3 events not written to /dev/full (No space left on device)"
    assert caplog.text.count("cannot write events to /dev/full") == 1 and "Traceback" not in caplog.text


def test_dispatcher_reports_what_each_sink_lost(tmp_path):
    dispatcher = EventDispatcher([BrokenSink(), JsonlSink("/dev/full"), JsonlSink(tmp_path / "ok.jsonl")])
    dispatcher.publish(events(5))
    dispatcher.close()
    assert [str(loss) for loss in dispatcher.losses()] == [
        "5 events not written to BrokenSink (OSError: disk full)",
        "5 events not written to /dev/full (No space left on device)"]
    assert len((tmp_path / "ok.jsonl").read_text().splitlines()) == 5


# -- event types a sink chooses --------------------------------------------------------------------------------
def typed_events() -> list[dict]:
    segment = events(1)[0]
    alert = {"type": "alert", "class": 0, "label": "class0", "start": 0.0, "end": 1.5, "score": 0.5,
             "segment": segment, "emitted_at": 1.0, "seq": 1}
    return [segment, alert, {"type": "stats", "fps": 25.0, "seq": 2}, {"type": "source_lost", "seq": 3}, alert]


def test_each_sink_gets_only_the_types_it_chose(tmp_path):
    alerts, everything, seen = tmp_path / "alerts.jsonl", tmp_path / "all.jsonl", []
    dispatcher = EventDispatcher([JsonlSink(alerts, types={"alert"}), JsonlSink(everything),
                                  CallbackSink(seen.append, types={"segment", "source_lost"})])
    dispatcher.publish(typed_events())
    dispatcher.close()
    chosen = [json.loads(line) for line in alerts.read_text().splitlines()]
    every = [json.loads(line) for line in everything.read_text().splitlines()]
    assert [e["type"] for e in chosen] == ["alert", "alert"] and chosen[0]["segment"]["seq"] == 0
    assert [e["type"] for e in every] == ["segment", "alert", "stats", "source_lost", "alert"]
    assert [e["id"] for e in chosen] == [every[1]["id"], every[4]["id"]]  # one id per event, whoever writes it
    assert [e["type"] for e in seen] == ["segment", "source_lost"]


def test_a_webhook_gets_only_its_types(tmp_path):
    receiver = Receiver()
    try:
        dispatcher = EventDispatcher([WebhookSink(receiver.url, tmp_path / "spool.jsonl", types=["segment"],
                                                  **FAST)])
        dispatcher.publish(typed_events())
        dispatcher.close()
        assert [e["type"] for e in receiver.received] == ["segment"]
    finally:
        receiver.stop()


def test_event_type_lists_parse_and_unknown_names_say_what_exists():
    assert parse_event_types("segment, alert") == {"segment", "alert"}
    assert parse_event_types("all") is None and parse_event_types(None) is None and parse_event_types("") is None
    with pytest.raises(ConfigError, match=r"'segmnt' \(did you mean 'segment'\?\) in 'segmnt,alert'; the types "
                                          r"are segment, segment_open, alert, stats"):
        parse_event_types("segmnt,alert")
    with pytest.raises(ConfigError, match="unknown event type 'bogus'"):
        JsonlSink("-", types={"bogus"})


# -- the spool as a window of events in flight (MQTT) ----------------------------------------------------------
def lines_of(items: list[dict]) -> list[bytes]:
    return [to_json_line(e).encode() for e in items]


def line_seqs(lines: list[bytes]) -> list[int]:
    return [json.loads(line)["seq"] for line in lines]


def test_spool_hands_out_a_window_and_keeps_unacknowledged_events_in_order(tmp_path):
    spool = Spool(tmp_path / "spool.jsonl", owner="MQTT")
    spool.append(lines_of(events(6)))
    assert line_seqs(spool.take(4)) == [0, 1, 2, 3] and line_seqs(spool.take(4)) == [4, 5]
    spool.ack(2)  # 0 and 1 delivered; 2..5 were in flight when the link dropped
    spool.release()
    spool.push_front(lines_of(events(2, first=100)))  # in flight from memory: older than everything waiting
    assert line_seqs(spool.take(10)) == [100, 101, 2, 3, 4, 5] and spool.count() == 6
    spool.ack(3)
    assert spool.close() == 0
    assert spool_seqs(tmp_path / "spool.jsonl") == [3, 4, 5]


def test_spool_close_writes_events_put_back_before_the_rest(tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(lines_of(events(3)))
    spool.take(1)
    spool.ack(1)
    spool.push_front(lines_of(events(1, first=50)))
    assert spool.close() == 0
    assert spool_seqs(tmp_path / "spool.jsonl") == [50, 1, 2]


def test_spool_window_follows_the_backlog_into_the_file(tmp_path):
    blocker = tmp_path / "spool"
    blocker.mkdir()  # the file cannot be written: events wait in memory
    spool = Spool(blocker, memory_events=10)
    spool.append(lines_of(events(3)))
    assert line_seqs(spool.take(2)) == [0, 1]
    blocker.rmdir()
    spool.append(lines_of(events(1, first=3)))  # the backlog moves to the file, two of it in flight
    spool.ack(1)
    assert line_seqs(spool.take(5)) == [2, 3]
    spool.release()
    assert line_seqs(spool.take(5)) == [1, 2, 3]
