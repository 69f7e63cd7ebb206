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
from ecm_edge.runtime.sinks import CallbackSink, EventDispatcher, JsonlSink, Sink, WebhookSink

FAST = dict(timeout_s=2.0, retries=3, backoff_s=0.02, backoff_max_s=0.1)


def events(n: int, first: int = 0) -> list[dict]:
    return [segment_event(i % 3, f"class{i % 3}", i, i + 1.5, 0.5, latency=1.0) | {"seq": i}
            for i in range(first, first + n)]


class Receiver:
    """An HTTP webhook receiver that answers 503 to its first ``fail_first`` requests, then 200."""

    def __init__(self, port: int = 0, fail_first: int = 0, delay_s: float = 0.0):
        self.received: list[dict] = []
        self.requests = 0
        self.fail_first, self.delay_s = fail_first, delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay_s)
                receiver.requests += 1
                if receiver.requests <= receiver.fail_first:
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
