"""``StreamEngine``: many streams in one process, their head evaluated as one batch (docs/design.md §7).

One :class:`~ecm_edge.runtime.localizer.Localizer` serves one stream, and its numpy head runs at batch 1: every
new column re-reads each layer's weights, which bounds a large head by memory bandwidth, not arithmetic. The
engine owns N streams, each in a *slot* of one :class:`~ecm_edge.runtime.head.BatchedColumnHead`::

    from ecm_edge import StreamEngine

    engine = StreamEngine.from_artifacts("runs/train/exp")
    engine.add_stream("cam-1")
    engine.add_stream("cam-2")
    while running:
        engine.push("cam-1", features_1)                 # [n, D] snippets, queued (thread-safe, never waits)
        engine.push("cam-2", features_2)                 # each source's clock continues from its last push
        for event in engine.step():                      # one tick: every stream with new snippets
            print(event["source"], event["type"], event.get("label"))
    engine.close()                                       # flushes every stream

A tick (:meth:`StreamEngine.step`) takes every stream's queued snippets, resamples them per stream at
``stream.columns_per_snippet`` (``ecm_edge.runtime.resample``, as the Localizer does), evaluates the new columns
of all streams with one matrix product per layer, and runs each stream's causal post-processing
(:class:`~ecm_edge.runtime.online.OnlinePostProcessor`, one per stream). The events equal those of one
Localizer per stream fed the same snippets (to float32 rounding of the head), with ``source`` added.

What it does not do yet: it loads deploy folders only and runs the numpy head (no ONNX Runtime / TensorRT batched
windows, no torch); the post-processing runs stream by stream in Python (no slot-array numba kernels); it has no
sinks, frames or extractors (feed it features; deliver the returned events yourself); it emits no ``stats``
events (:meth:`StreamEngine.stats` reports per source).

A source's queue holds at most ``stream.queue_snippets`` snippets between ticks; snippets pushed beyond that are
dropped (their source time still passes, so the stream sees a gap) and counted per source. A gap longer than
``stream.max_frame_gap_s`` between a source's snippets ends its stream there and starts a new one, as in the
Localizer. :meth:`StreamEngine.push` only queues (its own lock), so sources may push from their own threads
while a tick runs; ticks, flushes, adding and removing streams are serialized.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecm_edge.config import Config
from ecm_edge.deploy_format import DEPLOY_REBUILD, META_NAME, WEIGHTS_NAME, is_deploy_folder
from ecm_edge.errors import CheckpointError, ConfigError, DataError, EcmEdgeError
from ecm_edge.kernels.score_rows import missing_weights_message
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.head import BatchedColumnHead, HeadWeights, load_head_weights
from ecm_edge.runtime.localizer import artifact_config, match_feature_dim
from ecm_edge.runtime.online import OnlineParams, OnlinePostProcessor
from ecm_edge.runtime.resample import ColumnPlan, ColumnResampler, columns_per_snippet
from ecm_edge.runtime.snippets import snippet_times


@dataclass
class SourceStats:
    """What happened to one source's snippets since it was added."""

    slot: int
    received: int = 0  # snippets pushed (dropped ones included)
    processed: int = 0  # snippets through the head
    dropped: int = 0  # snippets dropped because the source's queue held stream.queue_snippets
    queued: int = 0  # snippets waiting for the next tick


@dataclass
class _Stream:
    """One source's state outside the head: queue, resampler, causal post-processing and clocks."""

    source: str
    slot: int
    resampler: ColumnResampler
    post: OnlinePostProcessor
    queue: deque[tuple[np.ndarray, float, float]] = field(default_factory=deque)  # (feature [D], start, end)
    pending_times: deque[tuple[float, float]] = field(default_factory=deque)  # columns whose CAS is not final
    last_end: float | None = None  # source time where the newest processed snippet ends (None: a fresh stream)
    clock: float = 0.0  # where the next snippet starts when the caller gives no time
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


class StreamEngine:
    """N streams by source id, one batched numpy head, one causal post-processor per stream (module doc)."""

    def __init__(self, weights: HeadWeights, class_names: Sequence[str], config: Config):
        if len(class_names) != weights.num_classes:
            raise ConfigError(f"{len(class_names)} class names for a head with {weights.num_classes} classes")
        self.weights, self.class_names, self.config = weights, list(class_names), config
        self.head = BatchedColumnHead(weights)
        self.rate = columns_per_snippet(config)
        self.params = OnlineParams.from_config(config, self.rate)
        if self.params.score_source != "cas" and weights.transition_weight is None:
            raise EcmEdgeError(missing_weights_message(self.params.score_source, "the deploy weights",
                                                       DEPLOY_REBUILD))
        self.queue_limit = config.stream.queue_snippets
        self._streams: dict[str, _Stream] = {}
        self._free_slots: list[int] = []  # a heap: the lowest free slot is reused first
        self._next_slot = 0
        self._queue_lock = threading.Lock()  # the streams' queues and clocks (push never waits for a tick)
        self._step_lock = threading.RLock()  # ticks, flushes, adding and removing streams
        self._closed = False

    @classmethod
    def from_artifacts(cls, path: str | Path, *, config: Config | str | Path | None = None,
                       overrides: Sequence[str] = ()) -> StreamEngine:
        """Load a deploy folder (``model.safetensors`` + ``model.json``, a training run folder) with its config
        and class names, as ``Localizer.from_artifacts`` does; ``config`` / ``overrides`` refine the config."""
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        if not is_deploy_folder(folder):
            raise CheckpointError(f"StreamEngine needs deploy weights ({WEIGHTS_NAME} + {META_NAME}) and {folder} "
                                  "has none; pass the training run folder (it runs the numpy head only for now, "
                                  "not export folders)")
        weights, meta = load_head_weights(folder)
        cfg = artifact_config(meta.get("config"), config, overrides, folder)
        match_feature_dim(cfg, weights, folder)
        return cls(weights, meta["class_names"], cfg)

    # -- streams ----------------------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.weights.feature_dim

    @property
    def sources(self) -> list[str]:
        """The ids of the streams held now, in the order they were added."""
        return list(self._streams)

    def add_stream(self, source_id: str) -> int:
        """Start a stream for ``source_id``; returns its slot (the lowest free one: slots of removed streams are
        reused, and start clean)."""
        if not isinstance(source_id, str) or not source_id:
            raise ConfigError(f"a source id is a non-empty string, got {source_id!r}")
        with self._step_lock:
            self._check_open()
            if source_id in self._streams:
                raise ConfigError(f"source {source_id!r} is already streaming; remove_stream it first or pick "
                                  "another id")
            slot = heapq.heappop(self._free_slots) if self._free_slots else self._take_new_slot()
            self.head.reset(slot)
            stream = _Stream(source_id, slot, ColumnResampler(self.rate),
                             OnlinePostProcessor(self.params, self.class_names))
            with self._queue_lock:
                self._streams[source_id] = stream
            return slot

    def remove_stream(self, source_id: str) -> list[ev.Event]:
        """End ``source_id``'s stream (its queued snippets and open segments are processed, as by :meth:`flush`)
        and free its slot; returns the events that gives."""
        with self._step_lock:
            events = self.flush(source_id)
            with self._queue_lock:
                stream = self._streams.pop(source_id)
            heapq.heappush(self._free_slots, stream.slot)
            return events

    def stats(self, source_id: str) -> SourceStats:
        """A copy of the source's counters."""
        with self._queue_lock:
            stream = self._stream(source_id)
            stream.stats.queued = len(stream.queue)
            return SourceStats(**vars(stream.stats))

    # -- input ------------------------------------------------------------------------------------------------
    def push(self, source_id: str, features: np.ndarray, start_time: float | None = None,
             end_times: Sequence[float] | None = None) -> int:
        """Queue snippet features ``[n, D]`` (or one ``[D]``) of ``source_id`` for the next tick; returns how many
        were queued (the rest were dropped: the queue held ``stream.queue_snippets``).

        Times as in ``Localizer.push_features``: consecutive snippet durations after the source's previous
        snippet by default; ``start_time`` sets the first snippet's start, ``end_times`` each snippet's end.
        """
        features = self._checked_features(source_id, features)
        with self._queue_lock:
            self._check_open()
            stream = self._stream(source_id)
            starts, ends = self._snippet_times(stream, len(features), start_time, end_times)
            room = max(0, self.queue_limit - len(stream.queue))
            stream.queue.extend(zip(features[:room], starts[:room], ends[:room], strict=True))
            stream.stats.received += len(features)
            stream.stats.dropped += max(0, len(features) - room)
            return min(room, len(features))

    def _checked_features(self, source_id: str, features: np.ndarray) -> np.ndarray:
        """A float32 copy ``[n, D]`` (the caller may reuse its buffer while the snippets wait); a wrong shape or
        non-finite values are an error that names the source."""
        features = np.array(features, np.float32)
        if features.ndim == 1:
            features = features[None]
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise DataError(f"source {source_id!r}: features must be [n, {self.feature_dim}] (snippets × the "
                            f"model's feature dim), got {list(features.shape)}; check that source's extractor")
        if not np.isfinite(features).all():
            raise DataError(f"source {source_id!r}: features contain NaN or Inf; check that source's extractor")
        return features

    def _snippet_times(self, stream: _Stream, n: int, start_time: float | None,
                       end_times: Sequence[float] | None) -> tuple[list[float], list[float]]:
        """Each snippet's source start and end (``Localizer.push_features``' rule); advances the source's clock."""
        starts, ends = snippet_times(stream.clock, n, self.config.data.snippet_seconds, start_time, end_times,
                                     where=f"source {stream.source!r}: push")
        if n:
            stream.clock = ends[-1]
        return starts, ends

    # -- ticks ------------------------------------------------------------------------------------------------
    def step(self) -> list[ev.Event]:
        """One tick: every stream's queued snippets through resampling, the batched head (one product per
        layer for all streams) and each stream's post-processing; returns the events, each with ``source``."""
        with self._step_lock:
            self._check_open()
            return self._drain(list(self._streams.values()))

    def flush(self, source_id: str) -> list[ev.Event]:
        """Process ``source_id``'s queued snippets, then end its stream: close and score its open segments. The
        next snippet starts a new stream (its times continue after the last one)."""
        with self._step_lock:
            self._check_open()
            stream = self._stream(source_id)
            return self._drain([stream]) + self._end_streams([stream])[0]

    def close(self) -> list[ev.Event]:
        """Flush and remove every stream (their last columns in one batched head call); returns their last
        events. The engine is unusable afterwards."""
        with self._step_lock:
            if self._closed:
                return []
            streams = list(self._streams.values())
            events = self._drain(streams)
            for ended in self._end_streams(streams):
                events += ended
            with self._queue_lock:
                self._streams.clear()
            self._closed = True
            return events

    def __enter__(self) -> StreamEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self, streams: list[_Stream]) -> list[ev.Event]:
        """Rounds of batched head calls until the streams' queues are empty (more than one round only where a
        source gap cuts a queue)."""
        events: list[ev.Event] = []
        while batches := self._take_batches(streams):
            events += self._run(batches)
        return events

    def _take_batches(self, streams: list[_Stream]) -> list[_Batch]:
        """Pop each stream's queued snippets up to (not including) the first one after a source gap."""
        limit = self.config.stream.max_frame_gap_s
        batches = []
        with self._queue_lock:
            for stream in streams:
                if not stream.queue:
                    continue
                restart = stream.last_end is not None and stream.queue[0][1] - stream.last_end > limit
                taken = [stream.queue.popleft()]
                while stream.queue and stream.queue[0][1] - taken[-1][2] <= limit:
                    taken.append(stream.queue.popleft())
                batches.append(_Batch(stream, np.stack([t[0] for t in taken]), [t[1] for t in taken],
                                      [t[2] for t in taken], restart))
        return batches

    def _run(self, batches: list[_Batch]) -> list[ev.Event]:
        """One batched head call for every batch's columns, then each stream's post-processing."""
        restarts = [b for b in batches if b.restart]
        closed = dict(zip(map(id, restarts), self._end_streams([b.stream for b in restarts]), strict=True))
        plans = [b.stream.resampler.plan(b.starts, b.ends) for b in batches]
        cas = self.head.push_many([b.stream.slot for b in batches],
                                  [b.features[plan.snippet] for b, plan in zip(batches, plans, strict=True)])
        events: list[ev.Event] = []
        for batch, plan, columns in zip(batches, plans, cas, strict=True):
            events += closed.get(id(batch), []) + self._post_process(batch, plan, columns)
        return events

    def _post_process(self, batch: _Batch, plan: ColumnPlan, cas: np.ndarray) -> list[ev.Event]:
        """The stream's causal post-processing of the CAS columns this round completed (``Localizer._process``:
        column times from the resampler, latencies from the snippets that completed the columns)."""
        stream = batch.stream
        stream.pending_times.extend(zip(plan.starts, plan.ends, strict=True))
        times = [stream.pending_times.popleft() for _ in range(len(cas))]
        m = len(cas)
        nows = plan.arrivals[len(plan) - m:] if m <= len(plan) else [batch.ends[-1]] * m
        stream.last_end = batch.ends[-1]
        stream.stats.processed += len(batch.features)
        events = stream.post.push(cas, [t[0] for t in times], [t[1] for t in times], nows,
                                  weights=self._transition(cas))
        return ev.from_source(events, stream.source)

    def _end_streams(self, streams: list[_Stream]) -> list[list[ev.Event]]:
        """End each stream (``Localizer._end_stream``): the head's last columns (one batched call for all) and
        the open candidates, as events per stream; the slots and the post-processing start afresh."""
        cas = self.head.flush_many([stream.slot for stream in streams])
        return [self._end_post_processing(stream, columns) for stream, columns in zip(streams, cas, strict=True)]

    def _end_post_processing(self, stream: _Stream, cas: np.ndarray) -> list[ev.Event]:
        now = stream.last_end
        times = [stream.pending_times.popleft() for _ in range(len(cas))]
        events = stream.post.push(cas, [t[0] for t in times], [t[1] for t in times],
                                  None if now is None else [now] * len(cas), weights=self._transition(cas))
        events += stream.post.flush(now)
        stream.pending_times.clear()
        stream.resampler.reset()
        stream.last_end = None
        return ev.from_source(events, stream.source)

    def _transition(self, cas: np.ndarray) -> np.ndarray | None:
        """The transition weights of CAS columns when the score source needs them."""
        return None if self.params.score_source == "cas" else self.weights.transition(cas)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _stream(self, source_id: str) -> _Stream:
        stream = self._streams.get(source_id)
        if stream is None:
            known = ", ".join(map(repr, self._streams)) or "none"
            raise ConfigError(f"unknown source {source_id!r} (streaming: {known}); add_stream it first")
        return stream

    def _take_new_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot - 1

    def _check_open(self) -> None:
        if self._closed:
            raise EcmEdgeError("this StreamEngine is closed; create a new one")
