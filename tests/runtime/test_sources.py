"""Frame sources on real I/O: a video file written by OpenCV, a live MJPEG stream served on 127.0.0.1 that is
cut and resumed, cameras and URLs that cannot be opened, and replayed feature files."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from mjpeg_server import MjpegServer

from ecm_edge.config import StreamConfig
from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.runtime.sources import FeatureReplaySource, ReconnectPolicy, open_source, parse_spec

FAST = StreamConfig(reconnect_initial_s=0.1, reconnect_max_s=0.4, open_timeout_s=2.0, read_timeout_s=1.0)


def write_video(path: Path, frames: int = 90, fps: float = 30.0, size: tuple[int, int] = (64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        image = np.zeros((size[1], size[0], 3), np.uint8)
        image[:, (i * 2) % size[0]:(i * 2) % size[0] + 6] = (0, 0, 255)
        writer.write(image)
    writer.release()
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

@pytest.fixture
def mjpeg():
    server = MjpegServer()
    yield server
    server.close()


def read_frames(source, count: int, timeout: float = 10.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        frames.append(source.read(timeout=max(0.01, deadline - time.monotonic())))
        assert frames[-1] is not None
    return frames


def wait_for(source, condition, timeout: float = 5.0) -> None:
    """Keep consuming ``source`` (frames already buffered may still arrive) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        with contextlib.suppress(TimeoutError):
            source.read(timeout=0.05)


def test_parse_spec_tells_cameras_urls_and_files_apart():
    assert parse_spec(0) == ("camera", 0)
    assert parse_spec("2") == ("camera", 2)
    assert parse_spec("rtsp://cam.local/stream") == ("url", "rtsp://cam.local/stream")
    assert parse_spec("clips/a.mp4") == ("file", "clips/a.mp4")
    with pytest.raises(EcmEdgeError, match="unsupported URL scheme"):
        parse_spec("ftp://host/video.mp4")


def test_video_file_policy_all_delivers_every_frame_with_its_timestamp(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    with open_source(path) as source:
        assert not source.live and source.policy == "all"
        assert source.fps == pytest.approx(30.0) and source.frame_count == 90
        frames = list(source)
        assert source.dropped_frames == 0
    assert [f.index for f in frames] == list(range(90))
    assert [f.timestamp for f in frames] == pytest.approx([i / 30.0 for i in range(90)], abs=1e-6)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8


def test_policy_latest_drops_stale_frames_and_counts_them(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    with open_source(path, policy="latest") as source:
        first = source.read()
        time.sleep(0.5)  # the reader decodes the rest of the file meanwhile; only the newest frame is kept
        rest = list(source)
        dropped = source.dropped_frames
    delivered = [first, *rest]
    assert dropped > 0
    assert len(delivered) + dropped == 90
    assert delivered[-1].index == 89  # the newest frame always survives
    indices = [f.index for f in delivered]
    assert indices == sorted(indices)


def test_missing_video_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "nope.mp4")


def test_camera_that_does_not_exist_fails_fast():
    started = time.monotonic()
    with pytest.raises(EcmEdgeError, match="cannot open camera 97"):
        open_source(97, config=FAST)
    assert time.monotonic() - started < FAST.open_timeout_s + 3.0


def test_url_that_cannot_be_opened_at_start_fails_fast():
    started = time.monotonic()
    with pytest.raises(EcmEdgeError, match="cannot open stream"):
        open_source(f"http://127.0.0.1:{closed_port()}/stream.mjpg", config=FAST)
    assert time.monotonic() - started < FAST.open_timeout_s + 3.0


def test_live_mjpeg_stream_is_reconnected_after_a_cut(mjpeg):
    events: list[dict] = []

    def record_then_fail(event: dict) -> None:
        events.append(event)
        raise RuntimeError("a broken callback must not stop the stream")

    with open_source(mjpeg.url, on_event=record_then_fail, config=FAST) as source:
        assert source.live and source.policy == "latest"
        before = read_frames(source, 5)
        mjpeg.down()
        wait_for(source, lambda: bool(events))  # the cut shows as source_lost
        assert events[0]["type"] == "source_lost" and events[0]["source"].startswith("stream http://127.0.0.1")
        time.sleep(0.8)  # some reopen attempts fail with 503 meanwhile
        mjpeg.up()
        after = read_frames(source, 5)
    assert [e["type"] for e in events] == ["source_lost", "source_restored"]
    assert events[1]["attempts"] >= 2 and events[1]["downtime_s"] >= 0.8
    assert mjpeg.connections == 2
    assert after[0].timestamp > before[-1].timestamp + 0.8  # the outage is a gap on the source clock
    assert after[0].index > before[-1].index


def test_live_source_that_stays_down_ends_with_an_error(mjpeg):
    events: list[dict] = []
    policy = ReconnectPolicy(initial_s=0.05, max_s=0.1, attempts=2)
    with open_source(mjpeg.url, reconnect=policy, on_event=events.append, config=FAST) as source:
        read_frames(source, 2)
        mjpeg.down()
        with pytest.raises(EcmEdgeError, match="could not be reopened after 2 attempts"):
            while source.read(timeout=10.0) is not None:
                pass
    assert [e["type"] for e in events] == ["source_lost"]


def test_reconnect_backoff_doubles_up_to_the_cap():
    policy = ReconnectPolicy.from_config(StreamConfig(reconnect_initial_s=0.5, reconnect_max_s=3.0))
    assert [policy.delay(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_feature_replay_realtime_and_as_fast_as_possible(tmp_path):
    features = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    np.save(tmp_path / "video.npy", features)
    started = time.monotonic()
    with FeatureReplaySource(tmp_path / "video.npy", snippet_seconds=0.05) as source:
        steps = list(source)
    assert time.monotonic() - started >= 6 * 0.05 - 0.01
    assert np.array_equal(np.stack([s.features for s in steps]), features)
    assert [s.start_time for s in steps] == pytest.approx([0.05 * i for i in range(6)])
    started = time.monotonic()
    fast = list(FeatureReplaySource(features, realtime=False))
    assert time.monotonic() - started < 0.2 and len(fast) == 6 and fast[-1].end_time == pytest.approx(6 * 0.64)


def test_feature_replay_rejects_bad_files(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    with pytest.raises(DataError, match=r"\[T, D\]"):
        FeatureReplaySource(tmp_path / "flat.npy")
    with pytest.raises(DataError, match="does not exist"):
        FeatureReplaySource(tmp_path / "missing.npy")
