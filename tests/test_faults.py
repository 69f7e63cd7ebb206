"""Fault injection: the ways `ecm-edge stream` and `ecm-edge eval` can lose events or meet bad input, in one place.

Real faults, no mocks: ``/dev/full`` is a full disk; ``RLIMIT_FSIZE`` in a subprocess stands in for a small file
system (mounting one needs root); webhook receivers are real HTTP servers on 127.0.0.1 (down, slow, failing,
hung, back late); SIGTERM and SIGINT go to a real ``ecm-edge stream`` process. Every case asserts exact counts of
events emitted / delivered / spooled / lost, the exit code and the message, so each can fail, and a new feature
is tried against all of them. Subprocesses only where the fault needs one
(signals, resource limits, a redirected stdout); the rest runs the real entry point in-process.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from stream_helpers import KEEP_ALL, D

from ecm_edge.cli.main import main
from ecm_edge.evaluation import write_predictions
from ecm_edge.runtime.localizer import Localizer

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full") or os.name != "posix",
                                reason="needs /dev/full, POSIX signals and resource limits")

FAST_WEBHOOK = ("--set", "stream.webhook_backoff_s=0.01", "--set", "stream.webhook_backoff_max_s=0.05")
REALTIME_FAST = ("--set", "data.feature_fps=1600")  # 10 ms snippets: a live-like stream that runs until stopped
MEMORY_LIMIT = 3 << 30  # address space of a stream subprocess: a regression fails the test, not the machine
PEAK_RSS_MAX = 1.5e9  # bytes
NO_SPACE = "No space left on device"


# -- fixtures and helpers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_features(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.npy"
    np.save(path, np.random.default_rng(2).normal(size=(5000, D)).astype(np.float32))  # 50 s at 10 ms snippets
    return path


@pytest.fixture(scope="module")
def emitted(stream_run, stream_features) -> int:
    """How many events a complete --no-realtime stream of ``stream_features`` emits (the in-process pipeline)."""
    localizer = Localizer.from_artifacts(stream_run, overrides=[KEEP_ALL[1]])
    count = 0
    for i, row in enumerate(np.load(stream_features)):
        count += len(localizer.push_features(row, start_time=i * 0.64, end_times=[i * 0.64 + 0.64]))
    count += len(localizer.flush())
    localizer.close()
    assert count > 20
    return count


def stream_args(stream_run: Path, features: Path, *args: str, realtime: bool = False) -> list[str]:
    return ["stream", "--features", str(features), "--artifacts", str(stream_run),
            *([] if realtime else ["--no-realtime"]), *KEEP_ALL, *args]


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """The real entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


class Stream:
    """``ecm-edge ARGS`` in a subprocess with resource limits; stdout and stderr go to files (never a full pipe)."""

    def __init__(self, args: list[str], folder: Path, *, file_size: int | None = None,
                 stdout_path: str | None = None, stdout_pipe: bool = False):
        self.out_path, self.err_path = Path(stdout_path or folder / "stdout"), folder / "stderr"
        self._piped: list[bytes] = []  # stdout through a pipe (a file-size limit does not apply to pipes)

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
            if file_size is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "ecm_edge", *args], stderr=err,
                                            stdout=subprocess.PIPE if stdout_pipe else out, preexec_fn=limits,
                                            env={**os.environ, "OMP_NUM_THREADS": "1"})
        if stdout_pipe:
            self._reader = threading.Thread(target=lambda: self._piped.append(self.process.stdout.read()))
            self._reader.start()
        self.peak_rss = 0.0  # bytes, from the kernel's accounting of the finished process

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds (then the process is killed and the test fails)."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.peak_rss = usage.ru_maxrss * 1024.0
                self.process.returncode = os.waitstatus_to_exitcode(status)
                return self.process.returncode
            if time.monotonic() > deadline:
                self.process.kill()
                os.wait4(self.process.pid, 0)
                pytest.fail(f"the stream did not end within {timeout} s; stderr: {self.stderr[-2000:]}")
            time.sleep(0.02)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def piped_events(self) -> list[dict]:
        """The events on a piped stdout (after :meth:`wait`)."""
        self._reader.join(timeout=10)
        return [json.loads(line) for line in b"".join(self._piped).decode().splitlines() if line.strip()]


def jsonl(path: Path | str) -> list[dict]:
    """Every line of a JSONL file as an object (a torn line fails the test)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def summary_segments(err: str) -> int:
    """N of the ``stream: S snippets, N segments`` line."""
    line = next(line for line in err.splitlines() if line.startswith("stream:") and "segments" in line)
    return int(line.split(",")[1].split()[0])


class Receiver:
    """A webhook receiver on 127.0.0.1: answers 500 to the first ``fail_first`` requests, waits ``delay_s`` per
    request, and holds the first request ``stall_first_s`` after reading it (the client times out)."""

    def __init__(self, port: int = 0, fail_first: int = 0, delay_s: float = 0.0, stall_first_s: float = 0.0):
        self.bodies: list[dict] = []  # every request read, answered or not
        self.keys: list[str | None] = []  # their Idempotency-Key headers
        self.answered_ok = 0
        receiver, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    receiver.bodies.append(body)
                    receiver.keys.append(self.headers.get("Idempotency-Key"))
                    n = len(receiver.bodies)
                time.sleep(delay_s)
                if n == 1 and stall_first_s:
                    time.sleep(stall_first_s)
                    return
                self.send_response(500 if n <= fail_first else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.answered_ok += n > fail_first

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- 1. a full spool disk: bounded memory, counted loss, SIGTERM ends it ---------------------------------------------
def test_full_spool_disk_keeps_memory_small_and_reports_every_lost_event(stream_run, stream_features, emitted,
                                                                         tmp_path):
    out, url = tmp_path / "events.jsonl", f"http://127.0.0.1:{free_port()}/"
    stream = Stream(stream_args(stream_run, stream_features, "--out", str(out), "--webhook", url, "--spool",
                                "/dev/full", *FAST_WEBHOOK), tmp_path)
    assert stream.wait(timeout=30) == 1, stream.stderr
    assert stream.peak_rss < PEAK_RSS_MAX
    assert len(jsonl(out)) == emitted  # the file sink went on
    assert last_line(stream.stderr) == (f"error: {emitted} events neither delivered to {url} nor spooled to "
                                        f"/dev/full ({NO_SPACE})")
    assert "Traceback" not in stream.stderr and "events written to" not in stream.stderr


def test_sigterm_ends_a_live_stream_with_a_full_spool_within_seconds(stream_run, long_features, tmp_path):
    out, url = tmp_path / "events.jsonl", f"http://127.0.0.1:{free_port()}/"
    stream = Stream(stream_args(stream_run, long_features, "--out", str(out), "--webhook", url, "--spool",
                                "/dev/full", *REALTIME_FAST, realtime=True), tmp_path)
    wait_for(lambda: len(jsonl(out)) >= 5)
    stream.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = stream.wait(timeout=15)
    assert time.monotonic() - sent < 5.0
    assert code == 1 and stream.peak_rss < PEAK_RSS_MAX, stream.stderr
    written = len(jsonl(out))
    assert summary_segments(stream.stderr) == written
    assert last_line(stream.stderr) == (f"error: {written} events neither delivered to {url} nor spooled to "
                                        f"/dev/full ({NO_SPACE})")


# -- 2. a full output disk: exit 1, one line, the other sinks go on -------------------------------------------------
def test_out_on_a_full_disk_exits_1_with_the_count(stream_run, stream_features, emitted, capsys):
    code, _, err = run_main(stream_args(stream_run, stream_features, "--out", "/dev/full"), capsys)
    assert code == 1
    assert last_line(err) == f"error: {emitted} events not written to /dev/full ({NO_SPACE})"
    assert "Traceback" not in err and "events written to" not in err


def test_stdout_on_a_full_disk_exits_1_with_the_count(stream_run, stream_features, emitted, tmp_path):
    stream = Stream(stream_args(stream_run, stream_features), tmp_path, stdout_path="/dev/full")
    assert stream.wait(timeout=30) == 1
    assert last_line(stream.stderr) == f"error: {emitted} events not written to stdout ({NO_SPACE})"
    assert "Traceback" not in stream.stderr


def test_webhook_still_gets_every_event_when_the_out_disk_is_full(stream_run, stream_features, emitted, tmp_path,
                                                                  capsys):
    receiver = Receiver()
    try:
        code, _, err = run_main(stream_args(stream_run, stream_features, "--out", "/dev/full", "--webhook",
                                            receiver.url, "--spool", str(tmp_path / "spool.jsonl")), capsys)
    finally:
        receiver.close()
    assert code == 1 and last_line(err) == f"error: {emitted} events not written to /dev/full ({NO_SPACE})"
    assert len(receiver.bodies) == emitted and not (tmp_path / "spool.jsonl").exists()


def test_out_file_hitting_a_size_limit_keeps_whole_lines_and_counts_the_rest(stream_run, stream_features, emitted,
                                                                             tmp_path):
    out = tmp_path / "events.jsonl"
    stream = Stream(stream_args(stream_run, stream_features, "--out", str(out)), tmp_path, file_size=4096)
    assert stream.wait(timeout=30) == 1
    written = len(jsonl(out))  # every line parses: the torn last line was cut off
    assert 0 < written < emitted and out.stat().st_size <= 4096
    assert last_line(stream.stderr) == f"error: {emitted - written} events not written to {out} (File too large)"


def test_spool_hitting_a_size_limit_spools_what_fits_and_counts_the_rest(stream_run, stream_features, emitted,
                                                                         tmp_path):
    spool, url = tmp_path / "spool.jsonl", f"http://127.0.0.1:{free_port()}/"
    stream = Stream(stream_args(stream_run, stream_features, "--webhook", url, "--spool", str(spool),
                                *FAST_WEBHOOK), tmp_path, file_size=4096, stdout_pipe=True)
    assert stream.wait(timeout=30) == 1
    on_stdout, spooled = stream.piped_events(), jsonl(spool)
    assert len(on_stdout) == emitted and 0 < len(spooled) < emitted
    assert [e["id"] for e in spooled] == [e["id"] for e in on_stdout[:len(spooled)]]  # the oldest, in order
    assert last_line(stream.stderr) == (f"error: {emitted - len(spooled)} events neither delivered to {url} nor "
                                        f"spooled to {spool} (File too large)")


def stream_to_receiver(receiver: Receiver, stream_run: Path, features: Path, spool: Path, capsys,
                       *extra: str) -> tuple[int, list[dict], str]:
    """Stream ``features`` to ``receiver`` (closed afterwards) with fast retries: (exit code, stdout events, stderr)."""
    try:
        code, out, err = run_main(stream_args(stream_run, features, "--webhook", receiver.url, "--spool", str(spool),
                                              *extra, *FAST_WEBHOOK), capsys)
    finally:
        receiver.close()
    return code, [json.loads(line) for line in out.splitlines()], err


# -- webhook receivers: down, back late, slow, failing, timing out ---------------------------------------------------
def test_webhook_down_spools_everything_and_a_later_run_sends_it_first(stream_run, stream_features, emitted,
                                                                       tmp_path, capsys):
    port, spool = free_port(), tmp_path / "spool.jsonl"
    args = stream_args(stream_run, stream_features, "--webhook", f"http://127.0.0.1:{port}/hook", "--spool",
                       str(spool), *FAST_WEBHOOK)
    code, out, err = run_main(args, capsys)
    first = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(first) == emitted
    assert jsonl(spool) == first  # ids included
    assert f"{emitted} undelivered events kept in {spool}" in err
    receiver = Receiver(port=port)  # the receiver comes back, after the run
    try:
        code, out, _ = run_main(args, capsys)
    finally:
        receiver.close()
    second = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and not spool.exists()
    assert receiver.bodies == first + second and receiver.keys == [e["id"] for e in first + second]


def test_slow_webhook_with_a_small_queue_gets_every_event_once(stream_run, stream_features, emitted, tmp_path,
                                                               capsys):
    receiver = Receiver(delay_s=0.005)
    code, events, _ = stream_to_receiver(receiver, stream_run, stream_features, tmp_path / "spool.jsonl", capsys,
                                         "--set", "stream.webhook_queue=4")
    ids = [e["id"] for e in events]
    assert code == 0 and len(ids) == emitted
    assert sorted(receiver.keys) == sorted(ids) and not (tmp_path / "spool.jsonl").exists()


def test_webhook_answering_500_for_a_while_gets_every_event_in_order(stream_run, stream_features, emitted, tmp_path,
                                                                     capsys):
    receiver = Receiver(fail_first=3)
    code, events, _ = stream_to_receiver(receiver, stream_run, stream_features, tmp_path / "spool.jsonl", capsys)
    ids = [e["id"] for e in events]
    assert code == 0 and len(ids) == emitted and receiver.answered_ok == emitted
    assert receiver.keys == [ids[0]] * 4 + ids[1:]  # the first event three times refused, then accepted


def test_receiver_timing_out_after_reading_gets_a_repeat_it_can_recognize(stream_run, stream_features, emitted,
                                                                          tmp_path, capsys):
    receiver = Receiver(stall_first_s=1.0)
    code, events, _ = stream_to_receiver(receiver, stream_run, stream_features, tmp_path / "spool.jsonl", capsys,
                                         "--set", "stream.webhook_timeout_s=0.3")
    assert code == 0 and len(receiver.bodies) == emitted + 1  # the first event arrived twice ...
    assert receiver.bodies[0] == receiver.bodies[1] == events[0]
    assert list(dict.fromkeys(receiver.keys)) == [e["id"] for e in events]  # ... with the same key: one repeat
    assert [b["id"] for b in receiver.bodies] == receiver.keys


def test_sigterm_with_a_hung_webhook_spools_what_is_pending_and_ends_within_seconds(stream_run, long_features,
                                                                                    tmp_path):
    hung = socket.socket()  # accepts connections (the kernel does), never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    out, spool = tmp_path / "events.jsonl", tmp_path / "spool.jsonl"
    try:
        stream = Stream(stream_args(stream_run, long_features, "--out", str(out), "--webhook",
                                    f"http://127.0.0.1:{hung.getsockname()[1]}/", "--spool", str(spool),
                                    "--set", "stream.webhook_timeout_s=60", *REALTIME_FAST, realtime=True), tmp_path)
        wait_for(lambda: len(jsonl(out)) >= 5)
        stream.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = stream.wait(timeout=15)
    finally:
        hung.close()
    assert time.monotonic() - sent < 5.0
    assert code == 0, stream.stderr
    events = jsonl(out)
    assert [e["id"] for e in jsonl(spool)] == [e["id"] for e in events]  # nothing delivered, nothing lost
    assert f"{len(events)} undelivered events kept in {spool}" in stream.stderr


# -- signals ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_flushes_open_segments_and_exits_0_within_seconds(stream_run, long_features, tmp_path, signum):
    out = tmp_path / "events.jsonl"
    stream = Stream(stream_args(stream_run, long_features, "--out", str(out), *REALTIME_FAST, realtime=True),
                    tmp_path)
    wait_for(lambda: len(jsonl(out)) >= 3)
    stream.process.send_signal(signum)
    sent = time.monotonic()
    assert stream.wait(timeout=15) == 0, stream.stderr
    assert time.monotonic() - sent < 5.0
    events = jsonl(out)
    snippets = int(stream.stderr.split("stream: ")[-1].split()[0])
    assert 0 < snippets < 5000 and summary_segments(stream.stderr) == len(events)
    assert any(abs(e["end"] - snippets * 0.01) < 1e-6 for e in events)  # open at the stop, closed by the flush


def test_sigterm_ends_a_stream_stuck_on_an_unread_stdout_pipe(stream_run, long_features, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "ecm_edge", *stream_args(stream_run, long_features)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # stdout never read: it fills up
    try:
        first = process.stdout.readline()
        time.sleep(1.0)  # the pipe and the event queue fill; writes and the pipeline block
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = process.wait(timeout=15)
        elapsed = time.monotonic() - sent
    finally:
        process.kill()
        process.stdout.close()
        err = process.stderr.read().decode()
        process.stderr.close()
    assert json.loads(first)["type"] == "segment"
    assert code == 1 and elapsed < 5.0
    assert last_line(err) == ("error: the stream did not finish within 4 s of the stop request; exiting without "
                              "the rest of the flush")


# -- bad input files -------------------------------------------------------------------------------------------------
def bad_feature_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the exact one-line error)."""
    good = np.random.default_rng(3).normal(size=(100, D)).astype(np.float32)
    files = {name: folder / f"{name}.npy" for name in ("text", "empty", "truncated", "pickled", "wrong_dim")}
    files["text"].write_text("0.1,0.2,0.3\n0.4,0.5,0.6\n")
    files["empty"].write_bytes(b"")
    np.save(files["truncated"], good)
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:2000])
    np.save(files["pickled"], np.array([good, good[:5]], dtype=object), allow_pickle=True)
    np.save(files["wrong_dim"], np.ones((100, 128), np.float32))
    where = {name: f"error: source '{name}': feature file {path}" for name, path in files.items()}  # id: the stem
    return {
        "text": (files["text"], f"{where['text']} cannot be read: it is not a .npy file (it does not start with "
                                "the NumPy file signature; it looks like a text file); re-extract it with np.save, "
                                "or remove it"),
        "empty": (files["empty"], f"{where['empty']} is empty (0 bytes); re-extract it"),
        "truncated": (files["truncated"], f"{where['truncated']} is not a readable .npy file (Failed to read all "
                                          "data for array. Expected (100, 32) = 3200 elements, could only read 468 "
                                          "elements. (file seems not fully written?))"),
        "pickled": (files["pickled"], f"{where['pickled']} holds pickled Python objects; a per-video feature file "
                                      "must be a plain numeric .npy array [T, D]"),
        "wrong_dim": (files["wrong_dim"], f"{where['wrong_dim']} holds features of shape [100, 128], but the model "
                                          f"expects [T, {D}] ({D} channels per snippet); use features from the "
                                          "extractor the model was trained with, or the artifacts trained on these "
                                          "features"),
    }


@pytest.mark.parametrize("name", ["text", "empty", "truncated", "pickled", "wrong_dim"])
def test_bad_feature_file_is_one_line_and_exit_1(stream_run, tmp_path, capsys, name):
    path, message = bad_feature_files(tmp_path)[name]
    code, out, err = run_main(stream_args(stream_run, path), capsys)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [message]


def test_nan_features_stop_the_stream_with_one_line(stream_run, stream_features, tmp_path, capsys):
    x = np.load(stream_features)
    x[10, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    code, _, err = run_main(stream_args(stream_run, tmp_path / "nan.npy", "--out", str(tmp_path / "e.jsonl")),
                            capsys)
    assert code == 1 and last_line(err).startswith("error: ") and "NaN" in last_line(err)
    assert "Traceback" not in err


def test_tampered_onnx_artifact_is_refused_before_streaming(stream_run, stream_features, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from ecm_edge.export.pipeline import ExportRequest, run_export

    result = run_export(ExportRequest(stream_run, tmp_path / "export", precision="fp32", engine=None))
    for graph in ("streaming", "offline"):
        artifact = result.artifact(graph, "fp32")
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0x01
        artifact.write_bytes(bytes(data))
    args = ["stream", "--features", str(stream_features), "--artifacts", str(tmp_path / "export"), "--engine",
            "onnxruntime", "--no-realtime"]
    code, out, err = run_main(args, capsys)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "does not match its manifest" in err and "Traceback" not in err


# -- eval input ------------------------------------------------------------------------------------------------------
GT = {"database": {"v1": {"subset": "test", "annotations": [{"segment": [1.0, 4.0], "label": "jump"}]}}}


@pytest.mark.parametrize(("segment", "words"), [
    ([-5, -1], "has a detection with a negative time ([-5.0, -1.0])"),
    ([-3, 2], "has a detection with a negative time ([-3.0, 2.0])"),
    ([10, 5], "has a detection that ends before it starts ([10.0, 5.0])"),
])
def test_eval_refuses_impossible_detection_times(tmp_path, capsys, segment, words):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    pred = write_predictions(tmp_path / "pred.json", {"v1": [{"label": "jump", "score": 0.9, "segment": segment}]})
    code, out, err = run_main(["eval", str(pred), "--gt", str(tmp_path / "gt.json")], capsys)
    assert code == 1 and out == ""
    assert err.strip().startswith(f"error: {pred}: video 'v1' {words}")


def test_eval_refuses_negative_ground_truth_and_ambiguous_times(tmp_path, capsys):
    pred = write_predictions(tmp_path / "pred.json", {"v1": [{"label": "jump", "score": 0.9, "segment": [1, 4]}]})
    bad_gt = {"database": {"v1": {"subset": "test", "annotations": [{"segment": [-3, 4], "label": "jump"}]}}}
    (tmp_path / "gt.json").write_text(json.dumps(bad_gt))
    code, _, err = run_main(["eval", str(pred), "--gt", str(tmp_path / "gt.json")], capsys)
    assert code == 1 and err.strip() == (f"error: {tmp_path / 'gt.json'}: video 'v1', annotation 0: segment has a "
                                         "negative time ([-3.0, 4.0]); times are seconds from the start of the "
                                         "video, so they must be >= 0")
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "Ambiguous_test.txt").write_text("v1 2.0 3.0\nv1 -1.5 0.5\n")
    code, _, err = run_main(["eval", str(pred), "--gt", str(tmp_path / "gt.json"), "--protocol", "thumos14"], capsys)
    assert code == 1 and err.strip().startswith(f"error: {tmp_path / 'Ambiguous_test.txt'}:2: video 'v1': segment "
                                                "has a negative time ([-1.5, 0.5])")


# -- quiet -----------------------------------------------------------------------------------------------------------
def test_quiet_silences_info_but_keeps_warnings_and_errors(stream_run, stream_features, emitted, tmp_path, capsys):
    out = tmp_path / "events.jsonl"
    code, _, err = run_main(["-q", *stream_args(stream_run, stream_features, "--out", str(out))], capsys)
    assert code == 0 and err == "" and len(jsonl(out)) == emitted
    spool = tmp_path / "spool.jsonl"
    code, _, err = run_main(["-q", *stream_args(stream_run, stream_features, "--out", str(out), "--webhook",
                                                f"http://127.0.0.1:{free_port()}/", "--spool", str(spool),
                                                *FAST_WEBHOOK)], capsys)
    assert code == 0 and "stream:" not in err and "events written to" not in err
    assert f"{emitted} undelivered events kept in {spool}" in err  # a warning
    code, _, err = run_main(["-q", *stream_args(stream_run, stream_features, "--out", "/dev/full")], capsys)
    assert code == 1 and err.strip().splitlines()[-1] == f"error: {emitted} events not written to /dev/full " \
                                                         f"({NO_SPACE})"


# -- deploy folders: corrupted weights, inconsistent or missing model.json ------------------------------------------
def copy_deploy(stream_run: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ("model.safetensors", "model.json"):
        (folder / name).write_bytes((stream_run / name).read_bytes())
    return folder


def overwrite_float(weights: Path, tensor: str, index: int, value: float) -> None:
    """Write one float32 of ``tensor`` in place, as a flipped bit on disk would (the file still parses)."""
    raw = weights.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    start = 8 + header_len + header[tensor]["data_offsets"][0] + 4 * index
    weights.write_bytes(raw[:start] + np.float32(value).tobytes() + raw[start + 4:])


def predict_args(folder: Path, features: Path, out: Path) -> list[str]:
    return ["predict", "--checkpoint", str(folder), "--features", str(features.parent), "-o", str(out)]


@pytest.mark.parametrize("value", [-7.2e36, float("nan")], ids=["flipped-exponent", "nan"])
@pytest.mark.parametrize("command", ["stream", "predict"])
def test_corrupted_deploy_weights_are_refused(stream_run, stream_features, tmp_path, capsys, value, command):
    pytest.importorskip("torch")
    folder = copy_deploy(stream_run, tmp_path / "run")
    overwrite_float(folder / "model.safetensors", "conv1.weight", 7, value)
    args = (stream_args(folder, stream_features) if command == "stream"
            else predict_args(folder, stream_features, tmp_path / "pred.json"))
    code, out, err = run_main(args, capsys)
    assert code == 1 and out == "" and "Traceback" not in err
    assert "does not match the sha256 recorded in" in last_line(err) and "--redeploy" in last_line(err)
    assert not (tmp_path / "pred.json").exists()


@pytest.mark.parametrize("command", ["stream", "predict"])
def test_non_finite_weights_with_a_matching_hash_are_refused(stream_run, stream_features, tmp_path, capsys, command):
    """A NaN written before the hash was taken (a training run that diverged, an older folder)."""
    pytest.importorskip("torch")
    from ecm_edge.deploy_format import SHA256_KEY, file_sha256

    folder = copy_deploy(stream_run, tmp_path / "run")
    overwrite_float(folder / "model.safetensors", "conv2.weight", 0, float("nan"))
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, SHA256_KEY: file_sha256(folder / "model.safetensors")}))
    args = (stream_args(folder, stream_features) if command == "stream"
            else predict_args(folder, stream_features, tmp_path / "pred.json"))
    code, _, err = run_main(args, capsys)
    assert code == 1 and "tensor conv2.weight holds 1 non-finite value(s)" in last_line(err)


@pytest.mark.parametrize("command", ["stream", "predict"])
@pytest.mark.parametrize("edit, words", [
    ({"dims": {"num_classes": 10}}, "len(class_names) is 4 but dims.num_classes is 10"),
    ({"dims": {"num_classes": 10}, "class_names": [f"c{i}" for i in range(10)],
      "config": {"model": {"num_classes": 10}}}, {"stream": "lists 10 classes but", "predict": "classifier.weight is [4, 48, 1] in the file, [10, 48, 1] by the dims"}),
], ids=["names-vs-dims", "weights-vs-dims"])
def test_inconsistent_model_json_is_refused_with_what_disagrees(stream_run, stream_features, tmp_path, capsys,
                                                               command, edit, words):
    pytest.importorskip("torch")
    folder = copy_deploy(stream_run, tmp_path / "run")
    meta = json.loads((folder / "model.json").read_text())
    for key, value in edit.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                if isinstance(inner_value, dict):
                    meta[key][inner].update(inner_value)
                else:
                    meta[key][inner] = inner_value
        else:
            meta[key] = value
    (folder / "model.json").write_text(json.dumps(meta))
    args = (stream_args(folder, stream_features) if command == "stream"
            else predict_args(folder, stream_features, tmp_path / "pred.json"))
    code, _, err = run_main(args, capsys)
    message = last_line(err)
    words = words if isinstance(words, str) else words[command]
    assert code == 1 and "Traceback" not in err and words in message, message
    assert not message.rstrip().endswith(":")  # torch's bare "Error(s) in loading state_dict for ECM:" is gone


@pytest.mark.parametrize("missing", ["model.json", "model.safetensors"])
def test_a_deploy_folder_missing_one_file_names_it(stream_run, stream_features, tmp_path, capsys, missing):
    folder = copy_deploy(stream_run, tmp_path / "run")
    (folder / missing).unlink()
    code, _, err = run_main(stream_args(folder, stream_features), capsys)
    assert code == 1 and f"but no {missing}" in last_line(err), err


# -- out-of-range settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["stream.horizon=0", "stream.horizon=-5", "post.nms_iou=2", "post.nms_iou=-1",
                                      "post.class_threshold=-1", "stream.warmup=-1", "stream.webhook_timeout_s=-1"])
def test_out_of_range_settings_stop_the_stream_before_it_starts(stream_run, stream_features, tmp_path, capsys,
                                                                override):
    key, value = override.split("=")
    code, out, err = run_main(stream_args(stream_run, stream_features, "--set", override,
                                          "--out", str(tmp_path / "e.jsonl")), capsys)
    assert code == 1 and out == "" and not (tmp_path / "e.jsonl").exists()
    assert err.strip().splitlines() == [last_line(err)] and "Traceback" not in err
    assert last_line(err).startswith(f"error: --set: {key} must be in ") and f"got {value}" in err
