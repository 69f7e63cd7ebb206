"""``ecm-edge stream`` as a real subprocess: features and video files in, JSONL out, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mjpeg_server import MjpegServer
from stream_helpers import KEEP_ALL, STREAM_COMMAND, D, assert_same_events, events_of, run_stream, write_video

from ecm_edge.runtime.localizer import Localizer
from ecm_edge.runtime.source_specs import url_id


def without_wall_clock(events: list[dict]) -> list[dict]:
    """Events without the wall-clock time and the per-run id (both differ between runs)."""
    return [{k: v for k, v in e.items() if k not in ("emitted_at", "id")} for e in events]


def test_features_to_stdout_jsonl(stream_run, stream_features):
    done = run_stream("--features", str(stream_features), "--artifacts", str(stream_run), "--engine", "numpy",
                      "--no-realtime", *KEEP_ALL)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert events and {e["type"] for e in events} == {"segment"}
    # one tick takes every snippet queued since the last one: the head's float32 sums may round in another order
    assert_same_events(without_wall_clock(events), without_wall_clock(replayed_in_process(stream_run, stream_features)))
    assert len({e["id"] for e in events}) == len(events)  # every event on the wire has its own id
    assert "120 snippets" in done.stderr


def test_features_to_a_file(stream_run, stream_features, tmp_path):
    out = tmp_path / "events.jsonl"
    done = run_stream("--features", str(stream_features), "--artifacts", str(stream_run), "--no-realtime",
                      "--backend", "numpy", "--out", str(out), *KEEP_ALL)  # --engine's former spelling still works
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and f"events written to {out}" in done.stderr
    expected = without_wall_clock(replayed_in_process(stream_run, stream_features))
    assert expected
    assert_same_events(without_wall_clock(events_of(out.read_text())), expected)


def replayed_in_process(run: Path, features: Path) -> list[dict]:
    """The events the Localizer gives for ``features`` pushed one snippet at a time with the replay source's
    snippet times, with the command's source id (the file's stem): what the command must write."""
    localizer = Localizer.from_artifacts(run, overrides=["post.class_threshold=0.0"])
    expected = []
    for i, row in enumerate(np.load(features)):
        expected += localizer.push_features(row, start_time=i * 0.64, end_times=[i * 0.64 + 0.64])
    expected += localizer.flush()
    localizer.close()
    return [{**event, "source": features.stem} for event in expected]


def test_video_file_through_the_tiny_extractor(stream_run, tmp_path):
    video = write_video(tmp_path / "clip.avi", seconds=8.0)  # 200 frames = 12 whole snippets
    done = run_stream("--video", str(video), "--artifacts", str(stream_run), "--extractor", "tiny", "--no-realtime",
                      "--set", "stream.stats_every_s=1e-9", *KEEP_ALL)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    assert {e["source"] for e in events} == {"clip", "*"}  # the file's stem; "*": the process-wide stats
    stats = [e for e in events if e["type"] == "stats" and e["source"] == "clip"]
    assert stats[-1]["snippets"] == 12 and stats[-1]["dropped_frames"] == 0
    assert any(e["type"] == "segment" for e in events)
    assert "12 snippets" in done.stderr


def test_camera_that_cannot_open_is_one_line_and_exit_1(stream_run):
    done = run_stream("--camera", "97", "--artifacts", str(stream_run), timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: source 'camera-97': cannot open camera 97")


def test_no_source_is_a_usage_error(stream_run):
    done = run_stream("--artifacts", str(stream_run))
    assert done.returncode == 2 and "give at least one source" in done.stderr


def test_ctrl_c_flushes_open_segments_and_exits_0(stream_run, tmp_path):
    features = np.random.default_rng(2).normal(size=(5000, D)).astype(np.float32)
    np.save(tmp_path / "long.npy", features)
    # 10 ms snippets in real time: a 50 s replay, interrupted after the first events
    process = subprocess.Popen([*STREAM_COMMAND, "--features", str(tmp_path / "long.npy"),
                                "--artifacts", str(stream_run), "--set", "data.feature_fps=1600", *KEEP_ALL],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    assert json.loads(first)["type"] == "segment"
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    snippets = int(err.strip().splitlines()[-1].split()[1])
    assert 0 < snippets < 5000
    events = events_of(first + rest)
    last_index = snippets - 1
    # the flush closed what was open at the interruption: segments ending at the last snippet came out
    assert any(abs(e["end"] - (last_index + 1) * 0.01) < 1e-6 for e in events)


def test_a_stop_request_never_waits_on_a_lock_the_interrupted_thread_holds():
    from ecm_edge.cli.stream import _graceful_stop

    # the signal handler runs on the main thread wherever it was interrupted, e.g. inside the source's
    # Event.wait holding that event's lock; an action run inside the handler would wait on itself
    held_by_main = threading.Lock()
    acquired = []

    def close_source() -> None:
        acquired.append(held_by_main.acquire(timeout=2.0))
        if acquired[-1]:
            held_by_main.release()

    with _graceful_stop() as stop:
        stop.actions.append(close_source)
        with held_by_main:
            stop(signal.SIGINT, None)
            assert stop.requested.is_set()
        deadline = time.monotonic() + 10.0
        while not acquired and time.monotonic() < deadline:
            time.sleep(0.01)
    assert acquired == [True]


def test_webhook_receiver_down_spools_every_event(stream_run, stream_features, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spool = tmp_path / "spool.jsonl"
    done = run_stream("--features", str(stream_features), "--artifacts", str(stream_run), "--no-realtime",
                      "--webhook", f"http://127.0.0.1:{port}/hook", "--spool", str(spool),
                      "--set", "stream.webhook_backoff_s=0.01", *KEEP_ALL)
    assert done.returncode == 0, done.stderr
    assert events_of(spool.read_text()) == events_of(done.stdout)
    assert "undelivered events kept in" in done.stderr


@pytest.mark.skipif(os.name != "posix", reason="uses a POSIX pipe")
def test_reader_leaving_the_pipe_ends_the_stream_quietly(stream_run, stream_features):
    stream = subprocess.Popen([*STREAM_COMMAND, "--features", str(stream_features),
                               "--artifacts", str(stream_run), "--no-realtime", *KEEP_ALL],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert stream.stdout.readline()
    stream.stdout.close()
    err = stream.stderr.read()
    assert stream.wait(timeout=60) == 0, err
    assert "Traceback" not in err


def test_live_url_cut_mid_way_reconnects_and_reports_it(stream_run):
    server = MjpegServer()
    fast = ["--set", "stream.read_timeout_s=0.5", "--set", "stream.reconnect_initial_s=0.1",
            "--set", "stream.reconnect_max_s=0.3", "--set", "stream.open_timeout_s=2.0",
            "--set", "stream.stats_every_s=0.2"]
    process = subprocess.Popen([*STREAM_COMMAND, "--url", server.url,
                                "--artifacts", str(stream_run), *fast, *KEEP_ALL],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()

    source = url_id(server.url)  # the id the command gives the URL: host, port and path

    def next_event(kind: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = json.loads(lines.get(timeout=0.1))
            except queue.Empty:
                continue
            if event["type"] == kind and event["source"] == source:
                return event
        raise AssertionError(f"no {kind} event within {timeout} s")

    try:
        while next_event("stats")["snippets"] < 1:  # the engine's stats come every interval, snippets or not
            pass  # wait until frames flowed through the whole pipeline
        server.down()
        lost = next_event("source_lost")
        time.sleep(0.5)  # reopen attempts meanwhile get 503
        server.up()
        restored = next_event("source_restored")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
        server.close()
    assert process.returncode == 0, err
    assert lost["reason"] and restored["attempts"] >= 1


def test_features_of_another_dimension_name_the_file_shape(stream_run, tmp_path):
    np.save(tmp_path / "wide.npy", np.ones((100, 128), np.float32))
    done = run_stream("--features", str(tmp_path / "wide.npy"), "--artifacts", str(stream_run), "--no-realtime")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: source 'wide': feature file {tmp_path / 'wide.npy'} holds features of shape [100, 128], "
                                   f"but the model expects [T, {D}] ({D} channels per snippet); use features from "
                                   "the extractor the model was trained with, or the artifacts trained on these "
                                   "features")


def test_quiet_prints_nothing_but_the_events(stream_run, stream_features):
    done = subprocess.run([sys.executable, "-m", "ecm_edge", "-q", "stream", "--features", str(stream_features),
                           "--artifacts", str(stream_run), "--no-realtime", *KEEP_ALL],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "" and events_of(done.stdout)
