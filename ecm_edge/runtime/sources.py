"""Where frames come from: cameras, video files, RTSP/HTTP URLs, and replayed feature files (docs/design.md §7).

Every frame source has one threading model: a reader thread pulls frames from OpenCV into a small buffer and
the caller's thread takes them with :meth:`read`. The buffer's policy is the one switch between the two ways
of consuming video:

- ``all`` (files): every frame is delivered; the reader waits when the buffer is full (back-pressure).
- ``latest`` (live sources): only the newest frame is kept; a frame replaced before it was read counts in
  ``dropped_frames``, so a slow pipeline never lags behind the camera.

A live source that stops delivering frames is reopened with exponential backoff; the outage is reported as a
``source_lost`` event and the recovery as ``source_restored``. A source that cannot be opened at the start is
an :class:`~ecm_edge.errors.EcmEdgeError` raised within the open timeout, never a hang.

Timestamps are seconds on the source's clock: the container's presentation time for files, and the time since
the source was opened (monotonic clock, taken as each frame arrives) for live sources, so timestamps keep
increasing across reconnects and an outage shows as a gap.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ecm_edge.config import CHOICES, DataConfig, StreamConfig
from ecm_edge.data.features import open_npy
from ecm_edge.errors import DataError, EcmEdgeError
from ecm_edge.runtime.events import SourceLost, SourceRestored

logger = logging.getLogger("ecm_edge")

EventCallback = Callable[[SourceLost | SourceRestored], None]

POLICIES = CHOICES["stream.frame_policy"]  # auto: latest for live sources, all for files
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_POLL_S = 0.1  # how often blocking waits look at the stop flag, so close() and Ctrl-C are prompt


@dataclass
class Frame:
    """One decoded video frame."""

    image: np.ndarray  # [H, W, 3] uint8, BGR (OpenCV order)
    timestamp: float  # seconds on the source's clock
    index: int  # position in the source's frame sequence (dropped frames leave gaps)


@dataclass
class FeatureSnippet:
    """One snippet's features from a replayed feature file."""

    features: np.ndarray  # [D] float32
    index: int
    start_time: float  # seconds
    end_time: float


@runtime_checkable
class FrameSource(Protocol):
    """What the snippet assembler and the stream read frames from."""

    live: bool
    description: str

    def open(self) -> None: ...

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None at the end of the stream (TimeoutError after ``timeout`` seconds)."""
        ...

    def close(self) -> None: ...

    @property
    def dropped_frames(self) -> int: ...


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff for reopening a lost live source."""

    initial_s: float
    max_s: float
    attempts: int = 0  # failed reopen attempts in a row before giving up (0: never give up)
    factor: float = 2.0  # each failed attempt multiplies the delay by this

    @classmethod
    def from_config(cls, stream: StreamConfig) -> ReconnectPolicy:
        return cls(stream.reconnect_initial_s, stream.reconnect_max_s, stream.reconnect_attempts)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reopen attempt ``attempt`` (1-based)."""
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


def parse_spec(spec: str | int | Path) -> tuple[str, int | str]:
    """Classify a source spec as ``("camera", index)``, ``("url", url)`` or ``("file", path)``."""
    if isinstance(spec, bool):
        raise EcmEdgeError(f"invalid source {spec!r}: pass a camera index, a video file or a URL")
    if isinstance(spec, int):
        return "camera", spec
    text = str(spec).strip()
    if text.isdigit():
        return "camera", int(text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in URL_SCHEMES:
        return "url", text
    if scheme:
        raise EcmEdgeError(f"unsupported URL scheme {scheme!r} in {text!r}; use one of {', '.join(URL_SCHEMES)}")
    return "file", text


def open_source(spec: str | int | Path, *, policy: str = "auto", reconnect: ReconnectPolicy | None = None,
                on_event: EventCallback | None = None, config: StreamConfig | None = None) -> VideoSource:
    """Open a camera index, video file or stream URL as a started :class:`VideoSource`.

    ``policy`` is ``latest`` (drop stale frames), ``all`` (every frame) or ``auto`` (live sources ``latest``,
    files ``all``). Timeouts, buffer size and the reconnect policy default to ``config`` (a
    :class:`StreamConfig`). Raises :class:`EcmEdgeError` when the source cannot be opened.
    """
    source = VideoSource(spec, policy=policy, reconnect=reconnect, on_event=on_event, config=config)
    source.open()
    return source


class _FrameBuffer:
    """The hand-over between the reader thread and the consumer, under one of the two policies."""

    def __init__(self, capacity: int, keep_latest: bool):
        self._items: collections.deque[Frame] = collections.deque()
        self._capacity = 1 if keep_latest else max(1, capacity)
        self._keep_latest = keep_latest
        self._cond = threading.Condition()
        self._finished = False
        self._error: BaseException | None = None
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Hand a frame over; False when stopped while waiting for room."""
        with self._cond:
            if self._keep_latest:
                while len(self._items) >= self._capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self._capacity:
                    if stop.is_set():
                        return False
                    self._cond.wait(_POLL_S)
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def finish(self, error: BaseException | None = None) -> None:
        """No more frames will come; ``error`` (if any) is raised to the consumer after the last frame."""
        with self._cond:
            self._finished = True
            self._error = error
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | bool | None:
        """A frame; None at the end; False when nothing arrived within ``timeout``."""
        with self._cond:
            if not self._items and not self._finished:
                self._cond.wait(timeout)
            if self._items:
                frame = self._items.popleft()
                self._cond.notify_all()
                return frame
            if self._finished:
                if self._error is not None:
                    raise self._error
                return None
            return False


class VideoSource:
    """A camera, video file or stream URL read through OpenCV by a reader thread (see the module doc)."""

    def __init__(self, spec: str | int | Path, *, policy: str = "auto", reconnect: ReconnectPolicy | None = None,
                 on_event: EventCallback | None = None, config: StreamConfig | None = None):
        if policy not in POLICIES:
            raise EcmEdgeError(f"unknown frame policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.config = config or StreamConfig()
        self.kind, self.target = parse_spec(spec)
        self.live = self.kind != "file"
        self.policy = ("latest" if self.live else "all") if policy == "auto" else policy
        self.reconnect = reconnect or ReconnectPolicy.from_config(self.config)
        self.description = _describe(self.kind, self.target)
        self.fps: float | None = None  # the source's nominal frame rate, when it reports one
        self.frame_count: int | None = None  # frames in a video file, when the container says (None: live)
        self.frames_read = 0  # frames decoded by the reader thread (delivered + dropped)
        self._on_event = on_event
        self._capture = None
        self._buffer: _FrameBuffer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = threading.Lock()  # close() may come from a stop-request thread and the owner at once
        self._clock_origin = 0.0
        self._last_timestamp = -np.inf

    # -- lifecycle --------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the capture and start the reader thread; raises :class:`EcmEdgeError` if it cannot be opened."""
        if self._thread is not None:
            return
        self._capture = self._open_capture()
        if self._capture is None:
            raise EcmEdgeError(self._open_failure_message())
        self.fps = _nominal_fps(self._capture)
        if not self.live:
            count = int(self._capture.get(_cv2().CAP_PROP_FRAME_COUNT))
            self.frame_count = count if count > 0 else None
        self._clock_origin = time.monotonic()
        self._buffer = _FrameBuffer(self.config.queue_frames, keep_latest=self.policy == "latest")
        self._stop.clear()
        self._thread = threading.Thread(target=self._reader_loop, name=f"ecm-edge source {self.description}",
                                        daemon=True)
        self._thread.start()
        logger.debug("opened %s (policy %s, fps %s)", self.description, self.policy, self.fps)

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None at the end; re-raises an error the reader thread hit.

        Blocks until a frame arrives; with ``timeout`` (seconds) raises :class:`TimeoutError` instead of
        waiting longer, so a caller can do periodic work while a live source is down.
        """
        if self._buffer is None:
            raise EcmEdgeError(f"{self.description} is not open; call open() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - time.monotonic()))
            item = self._buffer.get(wait)
            if item is not False:
                return item
            if self._stop.is_set():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no frame from {self.description} within {timeout:g} s")

    def close(self) -> None:
        """Stop the reader thread and release the capture (idempotent, thread-safe)."""
        self._stop.set()
        with self._closing:
            thread, self._thread = self._thread, None
            if thread is not None:
                thread.join(timeout=self.config.read_timeout_s + self.config.open_timeout_s + 1.0)
                if thread.is_alive():  # stuck inside OpenCV; releasing under it could crash, so leave it to exit
                    logger.warning("%s: reader thread did not stop in time; leaving it to finish", self.description)
                    return
            if self._capture is not None:
                self._capture.release()
                self._capture = None

    def __enter__(self) -> VideoSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    @property
    def dropped_frames(self) -> int:
        return self._buffer.dropped if self._buffer is not None else 0

    # -- the reader thread ------------------------------------------------------------------------------------
    def _reader_loop(self) -> None:
        assert self._buffer is not None
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                ok, image = self._capture.read()
                if ok and image is not None:
                    frame = Frame(_as_bgr(image), self._timestamp(), self.frames_read)
                    self.frames_read += 1
                    if not self._buffer.put(frame, self._stop):
                        break
                elif not self.live or not self._recover():
                    break
        except EcmEdgeError as exc:
            error = exc
        except Exception as exc:  # an OpenCV failure must reach the consumer, not die with the thread
            logger.debug("reader thread of %s failed", self.description, exc_info=True)
            error = EcmEdgeError(f"{self.description}: reading frames failed: {exc}")
        self._buffer.finish(error)

    def _timestamp(self) -> float:
        if self.live:
            return time.monotonic() - self._clock_origin
        position = self._capture.get(_cv2().CAP_PROP_POS_MSEC) / 1000.0
        if position > self._last_timestamp:
            self._last_timestamp = position
        else:  # a container without usable timestamps: fall back to the nominal rate
            self._last_timestamp = self.frames_read / (self.fps or DataConfig().feature_fps)
        return self._last_timestamp

    def _recover(self) -> bool:
        """Reopen a lost live source with backoff; True once frames can flow again."""
        lost_at = time.monotonic()
        self._emit(SourceLost("no frame within the read timeout or stream ended", self.reconnect.delay(1)))
        logger.warning("%s lost; reconnecting", self.description)
        self._capture.release()
        self._capture = None
        attempt = 0
        while True:
            attempt += 1
            if self._stop.wait(self.reconnect.delay(attempt)):
                return False
            self._capture = self._open_capture()
            if self._capture is not None:
                downtime = time.monotonic() - lost_at
                self._emit(SourceRestored(attempt, round(downtime, 3)))
                logger.warning("%s restored after %.1f s (%d attempt(s))", self.description, downtime, attempt)
                return True
            logger.info("%s: reopen attempt %d failed; next in %.1f s", self.description, attempt,
                        self.reconnect.delay(attempt + 1))
            if self.reconnect.attempts and attempt >= self.reconnect.attempts:
                raise EcmEdgeError(f"{self.description} was lost and could not be reopened after {attempt} "
                                   f"attempts; check the device or network, or raise stream.reconnect_attempts "
                                   f"(0 retries forever)")

    def _emit(self, event: SourceLost | SourceRestored) -> None:
        event.source, event.wall_time = self.description, time.time()
        event.timestamp = round(time.monotonic() - self._clock_origin, 3)
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:  # a failing callback must not stop the stream
            logger.exception("%s: event callback failed on %s", self.description, event["type"])

    # -- OpenCV ----------------------------------------------------------------------------------------------
    def _open_capture(self):
        """A started cv2.VideoCapture, or None when the source cannot be opened."""
        cv2 = _cv2()
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.config.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.config.read_timeout_s * 1000)]
        if self.kind == "file":
            path = Path(self.target)
            if not path.is_file():
                raise DataError(f"video file {path} does not exist")
            capture = cv2.VideoCapture(str(path))
        elif self.kind == "url":
            capture = cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, timeouts)
        else:
            capture = cv2.VideoCapture(int(self.target), cv2.CAP_ANY, timeouts)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _open_failure_message(self) -> str:
        if self.kind == "camera":
            return (f"cannot open camera {self.target}: no such device or it is in use by another program; "
                    f"check the index (cameras are numbered from 0) and the permissions of /dev/video*")
        if self.kind == "url":
            return (f"cannot open stream {self.target} within {self.config.open_timeout_s:g} s; check the address, "
                    f"credentials and network (stream.open_timeout_s sets the limit)")
        return f"cannot decode video file {self.target}: not a video OpenCV can read (corrupt or unsupported codec)"


class FeatureReplaySource:
    """Replays a ``[T, D]`` feature file snippet by snippet, in real time or as fast as possible.

    In real time snippet ``i`` is released when it would have ended in a live stream, ``(i + 1)`` snippet
    durations after :meth:`open`, so a stream fed from it behaves like one fed from a camera.
    """

    live = False

    def __init__(self, features: str | Path | np.ndarray, *, realtime: bool = True,
                 snippet_seconds: float | None = None, feature_dim: int | None = None):
        self.description = f"features {features}" if not isinstance(features, np.ndarray) else "features array"
        self.features = _load_features(features, feature_dim)
        self.realtime = realtime
        self.snippet_seconds = snippet_seconds or DataConfig().snippet_seconds
        self._index = 0
        self._origin: float | None = None
        self._stop = threading.Event()

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def dropped_frames(self) -> int:
        return 0

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def open(self) -> None:
        if self._origin is None:
            self._origin = time.monotonic()
            self._stop.clear()

    def read(self) -> FeatureSnippet | None:
        """The next snippet's features (waiting for its release time in real time), or None at the end."""
        if self._origin is None:
            self.open()
        if self._index >= len(self) or self._stop.is_set():
            return None
        index = self._index
        if self.realtime:
            release = self._origin + (index + 1) * self.snippet_seconds
            if self._stop.wait(max(0.0, release - time.monotonic())):
                return None
        self._index += 1
        start = index * self.snippet_seconds
        return FeatureSnippet(self.features[index], index, start, start + self.snippet_seconds)

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> FeatureReplaySource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[FeatureSnippet]:
        while (item := self.read()) is not None:
            yield item


def _load_features(features: str | Path | np.ndarray, feature_dim: int | None = None) -> np.ndarray:
    """The ``[T, D]`` array of a feature file (or array), checked; ``feature_dim``: the D the model expects."""
    if isinstance(features, np.ndarray):
        array, where = features, "feature array"
    else:
        where = f"feature file {features}"
        array = open_npy(Path(features), where)
    if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{where} must hold a numeric [T, D] array with T > 0, got shape {array.shape} "
                        f"and dtype {array.dtype}")
    if feature_dim is not None and array.shape[1] != feature_dim:
        raise DataError(f"{where} holds features of shape {list(array.shape)}, but the model expects "
                        f"[T, {feature_dim}] ({feature_dim} channels per snippet); use features from the extractor "
                        "the model was trained with, or the artifacts trained on these features")
    return np.ascontiguousarray(array, dtype=np.float32)


def _describe(kind: str, target: int | str) -> str:
    if kind == "url":
        return f"stream {_redact(str(target))}"
    return f"camera {target}" if kind == "camera" else f"video {target}"


def _redact(url: str) -> str:
    """The URL without its password, for logs and events."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        credentials, host = rest.split("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def _nominal_fps(capture) -> float | None:
    fps = float(capture.get(_cv2().CAP_PROP_FPS))
    return fps if np.isfinite(fps) and 0 < fps < 1000 else None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV delivers grey or BGRA from some cameras; the pipeline expects [H, W, 3] uint8 BGR."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


def _cv2():
    import cv2

    return cv2
