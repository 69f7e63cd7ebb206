"""``StreamEngine``: N streams in one process, their head evaluated as one batch (docs/design.md §7).

One stream at a time, every new column of a large head re-reads each layer's weights (memory-bound), every
stream post-processes on its own, and on a GPU every step is a tiny launch. The engine owns N streams, each in a
*slot* of one batched head (:class:`~ecm_edge.runtime.head.SlotHead`: numpy on deploy weights, or the exported
graphs with a dynamic batch on ONNX Runtime / TensorRT) and of one slot-array causal post-processor::

    from ecm_edge import StreamEngine

    with StreamEngine.from_artifacts("runs/train/exp", extractor="tiny") as engine:
        engine.on_event(print)                          # or add_sink(JsonlSink(...)), WebhookSink, ...
        engine.add_stream("cam-1")
        engine.add_stream("lobby", overrides=["post.class_threshold=0.3"])
        engine.push_frames("cam-1", frames, timestamps)  # from any thread; never waits for a tick
        engine.push("lobby", features)                   # or snippet features [n, D]
        events = engine.step()                           # one tick for every stream with new snippets
    # leaving the block flushes every stream

A tick (:meth:`StreamEngine.step`) takes every stream's completed frame snippets and extracts them in one call of
the extractor, takes every stream's queued snippets, resamples them per stream at ``stream.columns_per_snippet``
(``ecm_edge.runtime.resample``), evaluates all streams' new columns with one head call, runs the causal
post-processing of all of them (``ecm_edge.runtime.causal``, kernels by ``stream.kernels``), and hands the
events, each with its ``source``, to the sinks. :class:`~ecm_edge.runtime.localizer.Localizer` is this engine with
one stream.

Bounded: a source's queue holds at most ``stream.queue_snippets`` snippets (features or frame snippets) between
ticks; what arrives beyond that is dropped whole (its source time still passes, so the stream sees a gap) and
counted. A gap longer than ``stream.max_frame_gap_s`` between a source's snippets ends its stream there and
starts a new one. :meth:`push` / :meth:`push_frames` only queue (a lock per source for frame assembly, one short
lock for the queues), so sources push from their own threads while a tick runs; ticks, flushes, adding and
removing streams are serialized.

Per-source overrides (``add_stream(..., overrides=[...])``) may change ``post.*`` and ``stream.*`` keys but not
the head's (``model.*``, ``data.*``, ``stream.columns_per_snippet``): streams with the same post-processing
parameters share one slot-array post-processor.

Every ``stream.stats_every_s`` a tick also emits ``stats`` events: one per source (its snippets, input rate,
dropped frames and snippets, lag, step percentiles) and, unless the engine serves a single
:class:`Localizer`, one for the process (``source`` ``"*"``: streams, snippets per second, dropped snippets, the
largest lag, tick percentiles).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecm_edge.config import Config, apply_overrides
from ecm_edge.deploy_format import DEPLOY_REBUILD
from ecm_edge.errors import ConfigError, DataError, EcmEdgeError
from ecm_edge.kernels.score_rows import missing_weights_message
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.alerts import AlertPolicy, PointsByClass, with_alerts
from ecm_edge.runtime.artifacts import (
    artifact_config,
    check_artifacts_folder,
    load_head,
    make_extractor,
    match_feature_dim,
)
from ecm_edge.runtime.causal import SlotPostProcessor, resolve_kernels
from ecm_edge.runtime.engines import PrecisionChoice
from ecm_edge.runtime.head import SlotHead
from ecm_edge.runtime.online import OnlineParams
from ecm_edge.runtime.resample import ColumnPlan, ColumnResampler, columns_per_snippet
from ecm_edge.runtime.sinks import EventDispatcher, EventHub, Sink
from ecm_edge.runtime.snippets import QueuedSnippet, SourceIntake, extract_queued

log = logging.getLogger("ecm_edge")

# Config sections a source may override for itself; the head's keys are shared by every stream of an engine.
SOURCE_OVERRIDE_SECTIONS = ("post.", "stream.", "alerts.")
ENDED_KEPT = 4096  # removed streams whose counters stay readable (a process where streams come and go stays bounded)
SHARED_KEYS = ("stream.columns_per_snippet", "stream.kernels", "stream.queue_snippets", "stream.stats_every_s",
               "stream.event_queue")


@dataclass
class SourceStats:
    """What happened to one source's snippets since it was added."""

    slot: int
    received: int = 0  # snippets pushed (dropped ones included)
    processed: int = 0  # snippets through the head
    dropped: int = 0  # snippets dropped because the source's queue held stream.queue_snippets
    queued: int = 0  # snippets waiting for the next tick
    dropped_frames: int = 0  # stale frames the source's reader dropped (set_dropped_frames)
    lag_s: float = 0.0  # how long the newest processed snippet waited between its push and its tick


@dataclass
class _Stream(SourceIntake):
    """One source's state outside the head and the post-processor: its intake (queue, clock, frame assembly),
    resampler, alert policy, counters."""

    source: str
    slot: int
    resampler: ColumnResampler
    post: SlotPostProcessor
    config: Config
    alerts: AlertPolicy
    pending_times: deque[tuple[float, float]] = field(default_factory=deque)  # columns whose CAS is not final
    last_end: float | None = None  # source time where the newest processed snippet ends (None: a fresh stream)
    steps: ev.StepStats = field(default_factory=ev.StepStats)
    frames_pushed: int = 0  # frames since the last tick took them (for the stats' input rate)
    stats: SourceStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = SourceStats(self.slot)


@dataclass
class _Batch:
    """A stream's snippets for one round of a tick, cut before the first source gap."""

    stream: _Stream
    features: np.ndarray  # [n, D]
    starts: list[float]
    ends: list[float]
    restart: bool  # a gap precedes the first snippet: end the stream before it


class _ProcessStats:
    """Tick durations and totals for the process-wide ``stats`` event."""

    def __init__(self) -> None:
        self.ticks: deque[float] = deque(maxlen=ev.STEP_HISTORY)
        self.snippets_since = 0
        self.since = time.monotonic()

    def record(self, seconds: float, snippets: int) -> None:
        self.ticks.append(seconds)
        self.snippets_since += snippets

    def event(self, streams: Iterable[_Stream]) -> ev.Event:
        streams = list(streams)
        now = time.monotonic()
        rate = self.snippets_since / max(now - self.since, 1e-9)
        self.snippets_since, self.since = 0, now
        p50, p99 = (np.percentile(np.fromiter(self.ticks, float), [50, 99]) * 1000.0 if self.ticks else (0.0, 0.0))
        return ev.process_stats_event(len(streams), rate, sum(s.stats.dropped for s in streams),
                                      max((s.stats.lag_s for s in streams), default=0.0), float(p50), float(p99))


class StreamEngine(EventHub):
    """N streams by source id: one batched head, slot-array causal post-processing, one set of sinks."""

    def __init__(self, head: SlotHead, class_names: Sequence[str], config: Config, *, extractor: Any = None,
                 sinks: Iterable[Sink] = (), engine: str = "custom", precision: str = "fp32",
                 precision_reason: str = "", process_stats: bool = True,
                 operating_points: PointsByClass | None = None):
        if len(class_names) != head.num_classes:
            raise ConfigError(f"{len(class_names)} class names for a head with {head.num_classes} classes")
        self.head, self.class_names, self.config, self.engine = head, list(class_names), config, engine
        self.precision, self.precision_reason = precision, precision_reason
        self.rate = columns_per_snippet(config)
        self.queue_limit = config.stream.queue_snippets
        self.dispatcher = EventDispatcher(sinks, config.stream.event_queue)
        self._extractor_spec = extractor
        self._extractor: Any = None
        self._posts: dict[OnlineParams, SlotPostProcessor] = {}
        self._streams: dict[str, _Stream] = {}
        self._ended: OrderedDict[str, _Stream] = OrderedDict()  # streams removed lately, for their counters
        self._free_slots: list[int] = []  # a heap: the lowest free slot is reused first
        self._next_slot = 0
        self.operating_points = operating_points
        self._process = _ProcessStats() if process_stats else None
        self._stats_since = time.monotonic()
        self._queue_lock = threading.Lock()  # the streams' queues and clocks (push never waits for a tick)
        self._step_lock = threading.RLock()  # ticks, flushes, adding and removing streams
        self._closed = False
        self._post_for(config)  # a score source the head cannot feed fails here, not at the first tick
        if config.alerts.enabled and not AlertPolicy(config.alerts, operating_points).active:
            log.debug("stream: no operating points and no alerts.min_score: segments only, no alert events "
                     "(`ecm-edge calibrate` picks the points)")

    @classmethod
    def from_artifacts(cls, path: str | Path, engine: str = "auto", *, config: Config | str | Path | None = None,
                       overrides: Sequence[str] = (), extractor: Any = None,
                       extractor_options: dict[str, Any] | None = None, sinks: Iterable[Sink] = (),
                       precision: str = "auto", **kwargs: Any) -> StreamEngine:
        """Load a deploy or export folder once (``ecm_edge.runtime.artifacts``) with its class names and config;
        ``config`` / ``overrides`` refine the config. ``engine`` is one of ``HEAD_ENGINES``, ``precision`` one of
        ``PRECISION_CHOICES`` (export folders; deploy weights run in fp32). ``extractor`` (needed for
        :meth:`push_frames`): a registry name (``tiny`` is sized to the model; ``i3d`` takes
        ``extractor_options={"artifact": "i3d.onnx"}``) or an extractor object."""
        folder = check_artifacts_folder(path, engine)
        head, class_names, stored_config, chosen, choice = load_head(folder, engine, precision)
        cfg = artifact_config(stored_config, config, overrides, folder)
        match_feature_dim(cfg, head, folder)
        if extractor is not None:
            extractor = make_extractor(extractor, head.feature_dim, **(extractor_options or {}))
        _log_choice(chosen, folder, choice, head)
        from ecm_edge.operating_points import read_operating_points

        return cls(head, class_names, cfg, extractor=extractor, sinks=sinks, engine=chosen,
                   precision=choice.precision, precision_reason=choice.reason,
                   operating_points=read_operating_points(folder), **kwargs)

    # -- streams ----------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.head.feature_dim

    @property
    def kernels(self) -> str:
        """What runs the causal post-processing: numpy, cpu or cuda (``stream.kernels`` resolved)."""
        return resolve_kernels(self.config.stream.kernels)

    @property
    def snippet_seconds(self) -> float:
        return self.config.data.snippet_seconds

    @property
    def sources(self) -> list[str]:
        """The ids of the streams held now, in the order they were added."""
        return list(self._streams)

    def add_stream(self, source_id: str, overrides: Sequence[str] = ()) -> int:
        """Start a stream for ``source_id``; returns its slot (the lowest free one: slots of removed streams are
        reused, and start clean). ``overrides`` (``"key=value"``, ``post.*`` / ``stream.*``) refine the
        post-processing of this source only."""
        if not isinstance(source_id, str) or not source_id:
            raise ConfigError(f"a source id is a non-empty string, got {source_id!r}")
        cfg = self._source_config(source_id, overrides)
        with self._step_lock:
            self._check_open()
            if source_id in self._streams:
                raise ConfigError(f"source {source_id!r} is already streaming; remove_stream it first or pick "
                                  "another id")
            slot = heapq.heappop(self._free_slots) if self._free_slots else self._take_new_slot()
            self.head.reset(slot)
            post = self._post_for(cfg)
            post.reset(slot)
            stream = _Stream(source_id, slot, ColumnResampler(self.rate), post, cfg,
                             AlertPolicy(cfg.alerts, self.operating_points))
            with self._queue_lock:
                self._streams[source_id] = stream
            return slot

    def remove_stream(self, source_id: str) -> list[ev.Event]:
        """End ``source_id``'s stream (its queued snippets and open segments are processed, as by :meth:`flush`)
        and free its slot; returns the events that gives (also handed to the sinks). Its counters stay readable
        (:meth:`stats`, :meth:`step_stats`) until :data:`ENDED_KEPT` more streams have ended."""
        with self._step_lock:
            events = self.flush(source_id)
            with self._queue_lock:
                stream = self._streams.pop(source_id)
                self._ended[source_id] = stream
                while len(self._ended) > ENDED_KEPT:
                    self._ended.popitem(last=False)
            heapq.heappush(self._free_slots, stream.slot)
            return events

    def stats(self, source_id: str) -> SourceStats:
        """A copy of the source's counters (also of a stream removed lately)."""
        with self._queue_lock:
            stream = self._stream_or_ended(source_id)
            stream.stats.queued = len(stream.queue)
            return SourceStats(**vars(stream.stats))

    def step_stats(self, source_id: str) -> ev.StepStats:
        """The source's step latencies and input counters (what its ``stats`` events summarize; also of a stream
        removed lately)."""
        return self._stream_or_ended(source_id).steps

    def set_dropped_frames(self, source_id: str, count: int) -> None:
        """The stale frames the source's reader has dropped so far (reported in its ``stats`` events)."""
        with self._queue_lock:
            self._stream(source_id).stats.dropped_frames = int(count)

    # -- input ------------------------------------------------------------------------------------------------
    def push(self, source_id: str, features: np.ndarray, start_time: float | None = None,
             end_times: Sequence[float] | None = None, start_times: Sequence[float] | None = None) -> int:
        """Queue snippet features ``[n, D]`` (or one ``[D]``) of ``source_id`` for the next tick; returns how many
        were queued (the rest were dropped: the queue held ``stream.queue_snippets``).

        Snippet times default to consecutive snippet durations after the source's previous snippet;
        ``start_time`` sets the first snippet's start, ``end_times`` each snippet's end (starts then follow the
        previous end); ``start_times`` with ``end_times`` set both for every snippet.
        """
        features = self._checked_features(source_id, features)
        with self._queue_lock:
            self._check_open()
            stream = self._stream(source_id)
            starts, ends = self._snippet_times(stream, len(features), start_time, end_times, start_times)
            stream.frames_pushed += len(features) * self.config.data.snippet_frames
            now = time.monotonic()
            return stream.enqueue([QueuedSnippet(x, s, e, now) for x, s, e in zip(features, starts, ends,
                                                                                  strict=True)],
                                  self.queue_limit, stream.stats)

    def push_frames(self, source_id: str, frames: Sequence[np.ndarray] | np.ndarray,
                    timestamps: Sequence[float]) -> int:
        """Video frames of ``source_id`` (``[H, W, 3]`` uint8, BGR as OpenCV delivers them) with their source times
        in seconds; returns how many snippets they completed and queued (their features are extracted at the next
        tick, with every other source's, in one call of the extractor)."""
        if len(frames) != len(timestamps):
            raise DataError(f"source {source_id!r}: push_frames got {len(frames)} frames but {len(timestamps)} "
                            "timestamps")
        stream = self._stream(source_id)
        clips = stream.assemble(frames, timestamps, self._new_assembler)
        with self._queue_lock:
            self._check_open()
            stream.frames_pushed += len(frames)
            now = time.monotonic()
            return stream.enqueue([QueuedSnippet(None, c.start_time, c.end_time, now, c) for c in clips],
                                  self.queue_limit, stream.stats)

    def process(self, source_id: str, features: np.ndarray | None = None, start_time: float | None = None,
                end_times: Sequence[float] | None = None) -> list[ev.Event]:
        """Push ``features`` without the queue bound and run a tick for ``source_id`` alone: the synchronous
        path of one caller that feeds one stream (the Localizer's). Returns the events."""
        with self._step_lock:
            if features is not None:
                features = self._checked_features(source_id, features)
                with self._queue_lock:
                    stream = self._stream(source_id)
                    starts, ends = self._snippet_times(stream, len(features), start_time, end_times)
                    stream.frames_pushed += len(features) * self.config.data.snippet_frames
                    now = time.monotonic()
                    stream.queue.extend(QueuedSnippet(x, s, e, now) for x, s, e in zip(features, starts, ends,
                                                                                strict=True))
                    stream.stats.received += len(features)
            return self._tick([self._stream(source_id)])

    def _checked_features(self, source_id: str, features: np.ndarray) -> np.ndarray:
        return checked_features(source_id, features, self.feature_dim)

    def _snippet_times(self, stream: _Stream, n: int, start_time: float | None, end_times: Sequence[float] | None,
                       start_times: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
        """Each snippet's source start and end (``snippet_times``' rule); advances the source's clock."""
        return stream.next_times(n, self.snippet_seconds, start_time, end_times, where=f"source {stream.source!r}: push",
                                 start_times=start_times)

    # -- ticks ------------------------------------------------------------------------------------------------
    def step(self) -> list[ev.Event]:
        """One tick: every stream's queued snippets through extraction, resampling, the batched head and the
        post-processing; returns the events (each with ``source``), also handed to the sinks."""
        with self._step_lock:
            self._check_open()
            return self._tick(list(self._streams.values()))

    def flush(self, source_id: str) -> list[ev.Event]:
        """Process ``source_id``'s queued snippets, then end its stream: close and score its open segments. The
        next snippet starts a new stream (its times continue after the last one)."""
        with self._step_lock:
            self._check_open()
            stream = self._stream(source_id)
            stream.drop_partial_snippet()
            events = self._tick([stream], stats=False)
            ended = self._end_streams([stream])[0]
            self.dispatcher.publish(ended)
            return events + ended

    def close(self) -> list[ev.Event]:
        """Flush and remove every stream (their last columns in one batched head call), deliver every event to
        the sinks, close them and release the head; returns the last events. The engine is unusable afterwards."""
        with self._step_lock:
            if self._closed:
                return []
            try:
                streams = list(self._streams.values())
                events = self._tick(streams, stats=False)
                for ended in self._end_streams(streams):
                    self.dispatcher.publish(ended)
                    events += ended
                with self._queue_lock:
                    for source, stream in self._streams.items():
                        self._ended[source] = stream
                    self._streams.clear()
                self._closed = True
            finally:
                self.dispatcher.close()
                self.head.close()
            return events

    def run(self, sources: Iterable[Any], *, realtime: bool = True, keep_going: bool = False,
            stop: threading.Event | None = None) -> Iterator[ev.Event]:
        """Stream ``sources`` (``SourceSpec`` s, camera indexes, URLs, video or ``.npy`` paths; ids from their
        names) and yield every event as it happens, each source on its own reader thread
        (``ecm_edge.runtime.feeds``). Ends when every file source has ended or ``stop`` is set; the engine is
        closed then (its sinks have every event). ``realtime=False`` replays files as fast as possible."""
        from ecm_edge.runtime.feeds import run_sources
        from ecm_edge.runtime.source_specs import spec_for

        specs: list[Any] = []
        for source in sources:
            spec = spec_for(source)
            taken = {s.id for s in specs}
            specs.append(spec if spec.id not in taken else spec_for(spec, _unused_id(spec.id, taken)))
        yield from run_sources(self, specs, realtime=realtime, keep_going=keep_going, stop=stop)

    def __enter__(self) -> StreamEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats_events(self) -> list[ev.Event]:
        """``stats`` events for the interval since the last ones: one per source and one for the process."""
        with self._queue_lock:
            streams = list(self._streams.values())
            events = [self._source_stats_event(stream) for stream in streams]
        if self._process is not None:
            events.append(self._with_precision(self._process.event(streams)))
        self._stats_since = time.monotonic()
        return events

    def _tick(self, streams: list[_Stream], stats: bool = True) -> list[ev.Event]:
        """Extraction, then rounds of batched head calls until the streams' queues are empty (more than one round
        only where a source gap cuts a queue); records the timing, publishes the events."""
        began = time.perf_counter()
        self._extract_clips(streams)
        events: list[ev.Event] = []
        processed: dict[str, int] = {}
        while batches := self._take_batches(streams):
            for batch in batches:
                processed[batch.stream.source] = processed.get(batch.stream.source, 0) + len(batch.features)
            events += self._run(batches)
        self._record(streams, processed, time.perf_counter() - began)
        if stats and self._stats_due():
            events += self.stats_events()
        self.dispatcher.publish(events)
        return events

    def _extract_clips(self, streams: list[_Stream]) -> None:
        """Features of every queued frame snippet of ``streams``, all in one call of the extractor."""
        extract_queued(streams, self._frame_extractor, self._queue_lock)

    def _take_batches(self, streams: list[_Stream]) -> list[_Batch]:
        """Pop each stream's queued snippets up to (not including) the first one after a source gap."""
        limit = self.config.stream.max_frame_gap_s
        batches = []
        now = time.monotonic()
        with self._queue_lock:
            for stream in streams:
                queue = stream.queue
                if not queue or queue[0].features is None:
                    continue
                restart = stream.last_end is not None and queue[0].start - stream.last_end > limit
                taken = [queue.popleft()]
                while queue and queue[0].features is not None and queue[0].start - taken[-1].end <= limit:
                    taken.append(queue.popleft())
                stream.stats.lag_s = now - taken[-1].pushed_at
                batches.append(_Batch(stream, np.stack([t.features for t in taken]), [t.start for t in taken],
                                      [t.end for t in taken], restart))
        return batches

    def _run(self, batches: list[_Batch]) -> list[ev.Event]:
        """One batched head call for every batch's columns, then one post-processing call per parameter group."""
        restarts = [b for b in batches if b.restart]
        closed = dict(zip(map(id, restarts), self._end_streams([b.stream for b in restarts]), strict=True))
        plans = [b.stream.resampler.plan(b.starts, b.ends) for b in batches]
        cas = self.head.push_many([b.stream.slot for b in batches],
                                  [b.features[plan.snippet] for b, plan in zip(batches, plans, strict=True)])
        weights = self._transition(cas)
        inputs = [self._post_input(batch, plan, columns)
                  for batch, plan, columns in zip(batches, plans, cas, strict=True)]
        outputs = self._post_process([b.stream for b in batches], inputs, weights, end=False)
        events: list[ev.Event] = []
        for batch, out in zip(batches, outputs, strict=True):
            events += closed.get(id(batch), []) + out
        return events

    def _post_input(self, batch: _Batch, plan: ColumnPlan, cas: np.ndarray
                    ) -> tuple[np.ndarray, list[float], list[float], list[float]]:
        """The CAS columns this round completed with their source times and, for latencies, the source time
        at which each became final (the end of the snippet that completed it)."""
        stream = batch.stream
        stream.pending_times.extend(zip(plan.starts, plan.ends, strict=True))
        times = [stream.pending_times.popleft() for _ in range(len(cas))]
        m = len(cas)
        nows = plan.arrivals[len(plan) - m:] if m <= len(plan) else [batch.ends[-1]] * m
        stream.last_end = batch.ends[-1]
        stream.stats.processed += len(batch.features)
        return cas, [t[0] for t in times], [t[1] for t in times], list(nows)

    def _post_process(self, streams: list[_Stream], inputs: list[tuple], weights: list[np.ndarray | None],
                      end: bool) -> list[list[ev.Event]]:
        """The causal post-processing of each stream's new columns, one call per parameter group (and, at the
        end of streams, their flush); events per stream, in the order of ``streams``, marked with ``source``."""
        out: list[list[ev.Event]] = [[] for _ in streams]
        groups: dict[int, list[int]] = {}
        for i, stream in enumerate(streams):
            groups.setdefault(id(stream.post), []).append(i)
        for members in groups.values():
            post = streams[members[0]].post
            slots = [streams[i].slot for i in members]
            pushed = post.push(slots, [inputs[i][0] for i in members], [inputs[i][1] for i in members],
                               [inputs[i][2] for i in members], [inputs[i][3] for i in members],
                               weights=[weights[i] for i in members])
            flushed = post.flush(slots, [streams[i].last_end for i in members]) if end else [[]] * len(members)
            for i, a, b in zip(members, pushed, flushed, strict=True):
                out[i] = with_alerts(ev.from_source(a + b, streams[i].source), streams[i].alerts)
        return out

    def _end_streams(self, streams: list[_Stream]) -> list[list[ev.Event]]:
        """End each stream: the head's last columns (one batched call for all) and the open candidates, as
        events per stream (not yet published); the slots, resamplers and post-processing start afresh."""
        if not streams:
            return []
        cas = self.head.flush_many([stream.slot for stream in streams])
        weights = self._transition(cas)
        inputs = []
        for stream, columns in zip(streams, cas, strict=True):
            now = stream.last_end
            times = [stream.pending_times.popleft() for _ in range(len(columns))]
            ends = [t[1] for t in times]
            inputs.append((columns, [t[0] for t in times], ends, ends if now is None else [now] * len(columns)))
        events = self._post_process(streams, inputs, weights, end=True)
        for stream in streams:
            stream.pending_times.clear()
            stream.resampler.reset()
            stream.last_end = None
        return events

    def _transition(self, cas: list[np.ndarray]) -> list[np.ndarray | None]:
        """The transition weights of the last head call's columns, per slot, when a score source needs them."""
        if all(post.params.score_source == "cas" for post in self._posts.values()):
            return [None] * len(cas)
        weights = self.head.last_transition_weights()
        if any(w is None for w in weights):
            where = f"the {self.engine} head's artifacts"
            source = next(p.params.score_source for p in self._posts.values() if p.params.score_source != "cas")
            raise EcmEdgeError(missing_weights_message(source, where, DEPLOY_REBUILD) if self.engine == "numpy"
                               else missing_weights_message(source, where))
        return weights

    # -- stats ------------------------------------------------------------------------------------------------
    def _record(self, streams: list[_Stream], processed: dict[str, int], seconds: float) -> None:
        """Each stream's snippets of this tick and the tick's time per snippet; the process's tick time."""
        total = sum(processed.values())
        with self._queue_lock:
            for stream in streams:
                frames, stream.frames_pushed = stream.frames_pushed, 0
                n = processed.get(stream.source, 0)
                stream.steps.record(seconds / n if n else 0.0, n, frames)
        if self._process is not None and total:
            self._process.record(seconds, total)

    def _stats_due(self) -> bool:
        every = self.config.stream.stats_every_s
        return every > 0 and time.monotonic() - self._stats_since >= every

    def _source_stats_event(self, stream: _Stream) -> ev.Event:
        event = stream.steps.event(stream.stats.dropped_frames)
        event.dropped_snippets, event.lag_s = stream.stats.dropped, round(stream.stats.lag_s, 3)
        return ev.from_source([self._with_precision(event)], stream.source)[0]

    def _with_precision(self, event: ev.Stats | ev.ProcessStats) -> ev.Event:
        event.precision, event.precision_reason = self.precision, self.precision_reason
        return event

    # -- helpers ----------------------------------------------------------------------------------------------
    def _source_config(self, source_id: str, overrides: Sequence[str]) -> Config:
        """The engine's config with the source's own overrides (post-processing keys only)."""
        if not overrides:
            return self.config
        for item in overrides:
            key = str(item).split("=", 1)[0].strip()
            if not key.startswith(SOURCE_OVERRIDE_SECTIONS) or key in SHARED_KEYS:
                raise ConfigError(f"source {source_id!r}: {key} cannot be set per source (only post.*, alerts.* and "
                                  f"stream.* keys other than {', '.join(SHARED_KEYS)}); set it for the whole "
                                  "engine instead")
        cfg = copy.deepcopy(self.config)
        apply_overrides(cfg, overrides)
        return cfg

    def _post_for(self, cfg: Config) -> SlotPostProcessor:
        """The post-processor of the streams with ``cfg``'s parameters (made on first use)."""
        params = OnlineParams.from_config(cfg, self.rate)
        post = self._posts.get(params)
        if post is None:
            if params.score_source != "cas" and not self._head_gives_weights():
                raise EcmEdgeError(missing_weights_message(params.score_source, f"the {self.engine} head's "
                                                           "artifacts", DEPLOY_REBUILD))
            post = self._posts[params] = SlotPostProcessor(params, self.class_names,
                                                           kernels=self.config.stream.kernels)
        return post

    def _head_gives_weights(self) -> bool:
        weights = getattr(self.head, "weights", None)
        return weights is None or weights.transition_weight is not None

    def _new_assembler(self) -> Any:
        from ecm_edge.runtime.extractors import assembler_for

        return assembler_for(self._frame_extractor(), self.config.data, self.config.stream)

    def _frame_extractor(self) -> Any:
        if self._extractor is None:
            self._extractor = make_extractor(self._extractor_spec, self.head.feature_dim)
        return self._extractor

    def _stream(self, source_id: str) -> _Stream:
        stream = self._streams.get(source_id)
        if stream is None:
            known = ", ".join(map(repr, self._streams)) or "none"
            raise ConfigError(f"unknown source {source_id!r} (streaming: {known}); add_stream it first")
        return stream

    def _stream_or_ended(self, source_id: str) -> _Stream:
        ended = self._ended.get(source_id)
        return ended if ended is not None and source_id not in self._streams else self._stream(source_id)

    def _take_new_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot - 1

    def _check_open(self) -> None:
        if self._closed:
            raise EcmEdgeError("this StreamEngine is closed; create a new one")


def checked_features(source_id: str, features: np.ndarray, feature_dim: int) -> np.ndarray:
    """A float32 copy ``[n, D]`` of a source's snippet features (the caller may reuse its buffer while the snippets
    wait); a wrong shape or non-finite values are an error that names the source."""
    features = np.array(features, np.float32)
    if features.ndim == 1:
        features = features[None]
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise DataError(f"source {source_id!r}: features must be [n, {feature_dim}] (snippets × the model's "
                        f"feature dim), got {list(features.shape)}; check that source's extractor")
    if not np.isfinite(features).all():
        raise DataError(f"source {source_id!r}: features contain NaN or Inf; check that source's extractor")
    return features


def _unused_id(base: str, taken: set[str]) -> str:
    """``base-2``, ``base-3``, ...: the first not in ``taken``."""
    return next(f"{base}-{n}" for n in itertools.count(2) if f"{base}-{n}" not in taken)


def _log_choice(chosen: str, folder: Path, choice: PrecisionChoice, head: SlotHead) -> None:
    """The choice among an export folder's precisions is news; deploy weights always run in fp32."""
    log.log(logging.DEBUG if choice.kind == "weights" else logging.INFO, "stream: %s head from %s in %s",
            chosen, folder, choice.describe())
    log.debug("stream: %d classes, D = %d", head.num_classes, head.feature_dim)
