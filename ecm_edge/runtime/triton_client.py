"""``ecm-edge stream --triton URL``: the streams run on a Triton server; this process reads sources and sinks.

:class:`TritonStreamEngine` has the interface ``ecm_edge.runtime.feeds`` drives (``add_stream``, ``push``,
``push_frames``, ``step``, ``remove_stream``, ``stats``, ``emit``, ``close``), so ``run_sources`` and every sink
work unchanged. Video frames are assembled and their features extracted here (one extractor call per tick for
all sources); each source is one *sequence* of the server's ``ecm_stream`` model (correlation id
``<source>@<client token>``), and :meth:`step` sends every source's queued snippets as one request of its
sequence — the first with START, the last (``remove_stream``) with END — all sources' requests at once, and
hands the events of the responses to the sinks with ``source`` set.

A server that goes away: the failed snippets stay queued (bounded, as in the engine), the source gets a
``source_lost`` event, and the request is tried again with backoff (``stream.reconnect_*``). When the server
answers again the sequence starts afresh (START: the server's state went with it) and ``source_restored``
follows. Events the server returned are never lost; the segments that were open in the lost state are.

HTTP (``http://host:8000``) or gRPC (``grpc://host:8001``) through ``tritonclient`` (``pip install
'ecm-edge[serve]'``), one client per worker thread (the clients are not thread-safe).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ecm_edge.config import Config, apply_overrides, load_config
from ecm_edge.errors import ConfigError, EcmEdgeError, import_optional
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.artifacts import make_extractor
from ecm_edge.runtime.engine import SourceStats, checked_features
from ecm_edge.runtime.sinks import EventDispatcher, EventHub, Sink
from ecm_edge.runtime.snippets import QueuedSnippet, SourceIntake, extract_queued
from ecm_edge.runtime.sources import ReconnectPolicy
from ecm_edge.triton_repository import (
    END_TIMES_INPUT,
    EVENTS_OUTPUT,
    FEATURES_INPUT,
    START_TIMES_INPUT,
    STREAM_MODEL,
)

log = logging.getLogger("ecm_edge")

PROTOCOLS = {"http": "tritonclient.http", "grpc": "tritonclient.grpc"}
WORKERS = 64  # requests in flight at once (one per source and tick): as many as the server batches per step
REQUEST_TIMEOUT_S = 30.0  # a request the server has not answered by then counts as a lost server
RESTART_MARKERS = ("must specify the START flag", "is not held by this server")  # the server lost the sequence
INVALID_MARKERS = ("[400]", "INVALID_ARGUMENT")  # the server refused the request itself: trying again won't help


def parse_triton_url(url: str) -> tuple[str, str]:
    """``http://host:8000`` / ``grpc://host:8001`` → (protocol, ``host:port``)."""
    parsed = urlparse(url)
    if parsed.scheme not in PROTOCOLS or not parsed.hostname:
        raise ConfigError(f"a Triton URL is http://HOST:PORT or grpc://HOST:PORT, got {url!r}")
    default = 8000 if parsed.scheme == "http" else 8001
    return parsed.scheme, f"{parsed.hostname}:{parsed.port or default}"


@dataclass
class _Remote(SourceIntake):
    """One source: its intake (queue, clock, frame assembly), sequence state and counters."""

    source: str
    sequence: str
    stats: SourceStats
    started: bool = False  # the server holds this sequence (a START went through)
    lost_at: float | None = None  # monotonic time the server went away for this source
    attempts: int = 0
    retry_at: float = 0.0


class TritonStreamEngine(EventHub):
    """Streams served by a Triton server's ``ecm_stream`` model (module doc); the engine interface of feeds."""

    engine = "triton"

    def __init__(self, url: str, *, model: str = STREAM_MODEL, config: Config | str | None = None,
                 overrides: Sequence[str] = (), extractor: Any = None, extractor_options: dict[str, Any] | None = None,
                 sinks: Iterable[Sink] = (), timeout_s: float = REQUEST_TIMEOUT_S):
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.protocol, self.address = parse_triton_url(url)
        self._module = import_optional(PROTOCOLS[self.protocol], "tritonclient[http,grpc]",
                                       "stream through a Triton server", "pip install 'ecm-edge[serve]'")
        self._local = threading.local()
        self._generation = 0  # bumped when the server went away: every worker makes a fresh client
        parameters = self._model_parameters()
        self.feature_dim = int(parameters["feature_dim"])
        self.class_names = parameters["class_names"].split(",")
        self.config = config if isinstance(config, Config) else load_config(config)
        apply_overrides(self.config, overrides)
        self.config.data.feature_dim = self.feature_dim
        self.rate = 1.0
        self.precision = parameters.get("head", "server")
        self.precision_reason = f"the {self.precision} head of {model} on {url}"
        self.queue_limit = self.config.stream.queue_snippets
        self.dispatcher = EventDispatcher(sinks, self.config.stream.event_queue)
        self.policy = ReconnectPolicy.from_config(self.config.stream)
        self._extractor = (make_extractor(extractor, self.feature_dim, **(extractor_options or {}))
                           if extractor is not None else None)
        self._token = uuid.uuid4().hex[:8]
        self._streams: dict[str, _Remote] = {}
        self._ended: OrderedDict[str, _Remote] = OrderedDict()
        self._lock = threading.Lock()
        self._step_lock = threading.RLock()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="ecm-edge triton")
        self._closed = False

    # -- streams ----------------------------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        return list(self._streams)

    def add_stream(self, source_id: str, overrides: Sequence[str] = ()) -> int:
        """A source's stream (its sequence starts with its first request). Per-source settings live on the
        server, so ``overrides`` are refused."""
        if overrides:
            raise ConfigError(f"source {source_id!r}: per-source settings ({', '.join(overrides)}) are not sent to a "
                              "Triton server; its thresholds are the exported model's")
        with self._lock:
            if source_id in self._streams:
                raise ConfigError(f"source {source_id!r} is already streaming")
            slot = len(self._streams) + len(self._ended)
            self._streams[source_id] = _Remote(source_id, f"{source_id}@{self._token}", SourceStats(slot))
            return slot

    def remove_stream(self, source_id: str) -> list[ev.Event]:
        """Send the source's last snippets with END (its open segments close on the server) and forget it."""
        with self._step_lock:
            stream = self._stream(source_id)
            stream.drop_partial_snippet()
            events = self._tick([stream], end=True)
            with self._lock:
                self._ended[source_id] = self._streams.pop(source_id)
            return events

    def flush(self, source_id: str) -> list[ev.Event]:
        """End the source's sequence (its next snippet starts a new one)."""
        with self._step_lock:
            return self._tick([self._stream(source_id)], end=True)

    def stats(self, source_id: str) -> SourceStats:
        with self._lock:
            stream = self._streams.get(source_id) or self._ended[source_id]
            stream.stats.queued = len(stream.queue)
            return SourceStats(**vars(stream.stats))

    def set_dropped_frames(self, source_id: str, count: int) -> None:
        with self._lock:
            self._stream(source_id).stats.dropped_frames = int(count)

    # -- input ------------------------------------------------------------------------------------------------
    def push(self, source_id: str, features: np.ndarray, start_time: float | None = None,
             end_times: Sequence[float] | None = None) -> int:
        """Queue snippet features ``[n, D]`` for the next tick (as ``StreamEngine.push``); returns how many fit."""
        features = checked_features(source_id, features, self.feature_dim)
        with self._lock:
            stream = self._stream(source_id)
            starts, ends = stream.next_times(len(features), self.config.data.snippet_seconds, start_time, end_times,
                                             where=f"source {source_id!r}: push")
            return stream.enqueue([QueuedSnippet(x, s, e) for x, s, e in zip(features, starts, ends, strict=True)],
                                  self.queue_limit, stream.stats)

    def push_frames(self, source_id: str, frames: Sequence[np.ndarray], timestamps: Sequence[float]) -> int:
        """Frames with their source times: assembled into snippets here, extracted at the next tick."""
        from ecm_edge.runtime.extractors import assembler_for

        if self._extractor is None:
            raise ConfigError("frames need a feature extractor (extractor='tiny' or 'i3d')")
        stream = self._stream(source_id)
        clips = stream.assemble(frames, timestamps,
                                lambda: assembler_for(self._extractor, self.config.data, self.config.stream))
        with self._lock:
            return stream.enqueue([QueuedSnippet(None, c.start_time, c.end_time, clip=c) for c in clips],
                                  self.queue_limit, stream.stats)

    # -- ticks ------------------------------------------------------------------------------------------------
    def step(self) -> list[ev.Event]:
        """Send every source's queued snippets to its sequence (all at once) and return the events."""
        with self._step_lock:
            if self._closed:
                raise EcmEdgeError("this TritonStreamEngine is closed; create a new one")
            return self._tick(list(self._streams.values()), end=False)

    def close(self) -> list[ev.Event]:
        """End every sequence (END with the last snippets), deliver the events to the sinks and close them."""
        with self._step_lock:
            if self._closed:
                return []
            try:
                events = self._tick(list(self._streams.values()), end=True)
                with self._lock:
                    self._ended.update(self._streams)
                    self._streams.clear()
            finally:
                self._closed = True
                self._pool.shutdown(wait=True)
                self.dispatcher.close()
            return events

    def __enter__(self) -> TritonStreamEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self, streams: list[_Remote], end: bool) -> list[ev.Event]:
        """Extract frame snippets, send one request per source that is due, publish what comes back."""
        self._extract(streams)
        now = time.monotonic()
        batches = [(s, self._take(s)) for s in streams if now >= s.retry_at or end]
        batches = [(s, items) for s, items in batches if items or (end and s.started)]
        futures = [self._pool.submit(self._send, s, items, end) for s, items in batches]
        events: list[ev.Event] = []
        for (stream, items), future in zip(batches, futures, strict=True):
            events += self._settle(stream, items, future.result(), end)
        self.dispatcher.publish(events)
        return events

    def _extract(self, streams: list[_Remote]) -> None:
        extract_queued(streams, lambda: self._extractor, self._lock)

    def _take(self, stream: _Remote) -> list[QueuedSnippet]:
        with self._lock:
            items = []
            while stream.queue and stream.queue[0].features is not None:
                items.append(stream.queue.popleft())
            return items

    def _send(self, stream: _Remote, items: list[QueuedSnippet], end: bool) -> list[dict[str, Any]] | Exception:
        """One request of the source's sequence; the events as dicts, or the exception that failed it."""
        module = self._module
        features = np.stack([i.features for i in items])[None] if items else \
            np.zeros((1, 0, self.feature_dim), np.float32)
        inputs = [self._input(FEATURES_INPUT, features, "FP32")]
        if items:
            inputs += [self._input(START_TIMES_INPUT, np.array([[i.start for i in items]]), "FP64"),
                       self._input(END_TIMES_INPUT, np.array([[i.end for i in items]]), "FP64")]
        try:
            result = self._client().infer(self.model, inputs, outputs=[module.InferRequestedOutput(EVENTS_OUTPUT)],
                                          sequence_id=stream.sequence, sequence_start=not stream.started,
                                          sequence_end=end, **self._timeout())
            return json.loads(result.as_numpy(EVENTS_OUTPUT).reshape(-1)[0])
        except Exception as exc:  # the client's and the network's errors alike: _settle sorts them
            return exc

    def _settle(self, stream: _Remote, items: list[QueuedSnippet], outcome: list[dict[str, Any]] | Exception,
                end: bool) -> list[ev.Event]:
        """Events of a successful request (after a ``source_restored`` if the server had gone), or the failure
        handled: queue the snippets again and back off, start the sequence afresh, or drop a refused request."""
        notices: list[ev.Event] = []
        if not isinstance(outcome, Exception):
            if stream.lost_at is not None:
                notices.append(self._restored(stream))
            stream.started = not end
            stream.stats.processed += len(items)
            return notices + [self._event(raw, stream.source) for raw in outcome]
        message = str(outcome)
        if any(marker in message for marker in RESTART_MARKERS):
            return self._restart(stream, items, message, end)
        if any(marker in message for marker in INVALID_MARKERS):
            log.error("source %r: the server refused %d snippets: %s", stream.source, len(items), message)
            return []
        return self._lost(stream, items, message)

    def _restart(self, stream: _Remote, items: list[QueuedSnippet], message: str, end: bool) -> list[ev.Event]:
        """The server answers but no longer holds the sequence (it restarted between two ticks): report it and
        send the snippets again with START, now when the stream ends, else at the next tick."""
        log.warning("source %r: the server no longer holds its sequence (%s); starting it again", stream.source,
                    message)
        notices = []
        if stream.lost_at is None:
            stream.lost_at = time.monotonic()
            notices = ev.from_source([ev.SourceLost(f"Triton server {self.url} lost the sequence: {message}"[:300],
                                                    0.0)], stream.source)
        stream.started = False
        if end:
            return notices + self._settle(stream, items, self._send(stream, items, end), end)
        self._requeue(stream, items)
        stream.retry_at = 0.0
        return notices

    def _lost(self, stream: _Remote, items: list[QueuedSnippet], message: str) -> list[ev.Event]:
        """The server is unreachable for this source: keep its snippets, back off, say so once."""
        self._requeue(stream, items)
        stream.started = False
        stream.attempts += 1
        delay = self.policy.delay(stream.attempts)
        stream.retry_at = time.monotonic() + delay
        self._generation += 1
        if stream.lost_at is not None:
            return []
        stream.lost_at = time.monotonic()
        log.warning("source %r: Triton server %s unreachable (%s); retrying with backoff", stream.source, self.url,
                    message.splitlines()[0] if message else "no answer")
        return ev.from_source([ev.SourceLost(f"Triton server {self.url} unreachable: {message}"[:300], delay)],
                              stream.source)

    def _restored(self, stream: _Remote) -> ev.Event:
        downtime = round(time.monotonic() - (stream.lost_at or time.monotonic()), 3)
        event = ev.SourceRestored(stream.attempts, downtime)
        event.source = stream.source
        log.warning("source %r: Triton server %s answers again after %.1f s; its sequence restarted", stream.source,
                    self.url, downtime)
        stream.lost_at, stream.attempts, stream.retry_at = None, 0, 0.0
        return event

    def _requeue(self, stream: _Remote, items: list[QueuedSnippet]) -> None:
        """Put unsent snippets back at the front, within the queue bound (the oldest beyond it are dropped)."""
        with self._lock:
            stream.queue.extendleft(reversed(items))
            while len(stream.queue) > self.queue_limit:
                stream.queue.popleft()
                stream.stats.dropped += 1

    @staticmethod
    def _event(raw: dict[str, Any], source: str) -> ev.Event:
        event = ev.event_from_dict(raw)
        event.source = source
        if isinstance(event, ev.Alert):
            event.segment = {**event.segment, ev.SOURCE_KEY: source}
        return event

    # -- the client -------------------------------------------------------------------------------------------
    def _client(self) -> Any:
        """This worker thread's client (made again after the server went away)."""
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            if self.protocol == "http":
                local.client = self._module.InferenceServerClient(self.address, connection_timeout=self.timeout_s,
                                                                  network_timeout=self.timeout_s)
            else:
                local.client = self._module.InferenceServerClient(self.address)
            local.generation = self._generation
        return local.client

    def _timeout(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _input(self, name: str, array: np.ndarray, dtype: str) -> Any:
        tensor = self._module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32 if dtype == "FP32" else np.float64))
        return tensor

    def _model_parameters(self) -> dict[str, str]:
        """The served model's parameters (feature dim, classes, head); a clear error when there is no server."""
        try:
            config = (self._client().get_model_config(self.model, as_json=True) if self.protocol == "grpc"
                      else self._client().get_model_config(self.model))
        except Exception as exc:
            raise EcmEdgeError(f"cannot read model {self.model!r} from the Triton server at {self.url} ({exc}); "
                               "start it with `ecm-edge serve REPOSITORY` or check --triton") from None
        config = config.get("config", config)
        raw = config.get("parameters", {})
        params = {k: (v.get("string_value", "") if isinstance(v, dict) else str(v)) for k, v in raw.items()}
        if "feature_dim" not in params or "class_names" not in params:
            raise EcmEdgeError(f"model {self.model!r} on {self.url} is not an ecm-edge stream model (no feature_dim "
                               "and class_names parameters); serve a repository of `ecm-edge export --triton`")
        return params

    def _stream(self, source_id: str) -> _Remote:
        stream = self._streams.get(source_id)
        if stream is None:
            raise ConfigError(f"unknown source {source_id!r}; add_stream it first")
        return stream

