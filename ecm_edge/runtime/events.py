"""The streaming runtime's events: a dataclass per type, one JSON object per line on the wire.

Each type is a dataclass (:class:`Segment`, :class:`SegmentOpen`, :class:`Alert`, :class:`Stats`,
:class:`ProcessStats`, :class:`SourceLost`, :class:`SourceRestored`) with typed attributes (``event.label``,
``event.class_id``) and ``to_dict()``, the JSON object on the wire. An event also reads like that object
(``event["label"]``, ``event["class"]``) and equals it, so code written against the JSON keeps working.

Types and fields (times in seconds; ``start``/``end``/``time`` on the source's clock, ``emitted_at`` UNIX time):

- ``segment``: a closed, final detection — ``class`` (index), ``label``, ``start``, ``end``, ``score``,
  ``emitted_at`` and ``latency`` (source time between the segment's end and the snippet whose arrival let it be
  emitted: the ±2-snippet receptive field plus the OIC outer window). Never revised once emitted.
- ``segment_open``: an early alert that a class became active (optional, ``stream.emit_open``) — ``class``,
  ``label``, ``start``, ``score`` (the causal video score), ``emitted_at``.
- ``alert``: a segment that reached its class's operating point (``ecm_edge.runtime.alerts``) — ``class``,
  ``label``, ``start``, ``end``, ``score``, ``min_score`` (the point), ``segment`` (the segment event it came
  from), ``emitted_at``; right after that segment.
- ``source_lost`` / ``source_restored``: a live source dropped out / came back (fields from the source).
- ``stats``: ``fps`` (input frames per second over the last interval; for feature input, snippets × frames per
  snippet), ``snippets`` (processed so far), ``dropped_frames``, ``step_ms_p50`` / ``step_ms_p99`` (head +
  post-processing per snippet over the recent steps), ``precision`` / ``precision_reason``
  (which graph runs and why).

Every event of a stream carries ``source``: the id the stream was added under (``ecm_edge.runtime.engine.
StreamEngine.add_stream``; a ``Localizer``'s one stream is its ``source`` argument). A stream's ``stats`` also give
``dropped_snippets`` (snippets dropped because its queue was full) and ``lag_s`` (how long its newest snippet
waited for a tick). An engine serving several streams adds a process-wide ``stats`` event with ``source`` ``"*"``:
``streams``, ``snippets_per_s``, ``dropped_snippets`` (all sources), ``lag_s`` (the largest), ``step_ms_p50`` /
``step_ms_p99`` (per tick).

On the wire (JSONL and webhook sinks) every event also carries ``id``: unique, assigned once when the event is
first handed to the sinks, and unchanged by webhook retries and spool re-sends (the webhook also sends it as the
``Idempotency-Key`` header), so a receiver can drop an event it has already seen. It is ``<run>-<n>``: a random
token per process and a counter. Python callbacks get the events as the pipeline returns them, without ``id``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

SEGMENT = "segment"
SEGMENT_OPEN = "segment_open"
SOURCE_LOST = "source_lost"
SOURCE_RESTORED = "source_restored"
STATS = "stats"
ALERT = "alert"
EVENT_TYPES = (SEGMENT, SEGMENT_OPEN, ALERT, STATS, SOURCE_LOST, SOURCE_RESTORED)  # what sinks can choose

STEP_HISTORY = 1000  # step latencies kept for the percentiles of `stats`

ID_KEY = "id"
SOURCE_KEY = "source"
PROCESS_SOURCE = "*"  # the source of the process-wide stats event
_RUN_TOKEN = uuid.uuid4().hex[:12]  # one per process: ids of different runs never collide
_COUNTER = itertools.count()  # next() is atomic under the GIL: ids stay unique across threads


def _round(seconds: float) -> float:
    return round(float(seconds), 3)


def _now() -> float:
    return time.time()


_OPTIONAL = {"optional": True}  # a field left out of the JSON while it is None
_CLASS_KEY = {"key": "class"}  # ``class`` is a Python keyword: the attribute is ``class_id``


class Event(Mapping[str, Any]):
    """What every event type shares: ``to_dict()`` (the JSON object), read access by JSON key, equality with
    that object. Subclasses are dataclasses whose fields are the JSON fields in order."""

    type: ClassVar[str]
    source: str | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[f.metadata.get("key", f.name)] = value
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __or__(self, other: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON object with ``other``'s keys added or replaced (as ``dict | dict``)."""
        return self.to_dict() | dict(other)


@dataclass(eq=False)
class Segment(Event):
    """A closed, final detection; never revised once emitted."""

    type: ClassVar[str] = SEGMENT
    class_id: int = field(metadata=_CLASS_KEY)
    label: str
    start: float
    end: float
    score: float
    emitted_at: float
    latency: float  # source time between the segment's end and the snippet whose arrival let it be emitted
    source: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(eq=False)
class SegmentOpen(Event):
    """An early notice that a class became active (``stream.emit_open``)."""

    type: ClassVar[str] = SEGMENT_OPEN
    class_id: int = field(metadata=_CLASS_KEY)
    label: str
    start: float
    score: float  # the causal video score
    emitted_at: float
    source: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(eq=False)
class Alert(Event):
    """A segment that reached its class's operating point (``ecm_edge.runtime.alerts``)."""

    type: ClassVar[str] = ALERT
    class_id: int = field(metadata=_CLASS_KEY)
    label: str
    start: float
    end: float
    score: float
    min_score: float  # the class's operating point
    segment: dict[str, Any]  # the segment event it came from, as on the wire
    emitted_at: float
    source: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(eq=False)
class Stats(Event):
    """One stream's figures for the interval since its last ``stats`` event."""

    type: ClassVar[str] = STATS
    fps: float  # input frames per second (feature input: snippets × frames per snippet)
    snippets: int  # processed so far
    dropped_frames: int
    step_ms_p50: float  # head + post-processing per snippet over the recent steps
    step_ms_p99: float
    emitted_at: float
    precision: str | None = field(default=None, metadata=_OPTIONAL)
    precision_reason: str | None = field(default=None, metadata=_OPTIONAL)
    dropped_snippets: int | None = field(default=None, metadata=_OPTIONAL)  # its queue was full
    lag_s: float | None = field(default=None, metadata=_OPTIONAL)  # how long its newest snippet waited
    source: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(eq=False)
class ProcessStats(Event):
    """A many-stream engine's figures for the whole process (``source`` is :data:`PROCESS_SOURCE`)."""

    type: ClassVar[str] = STATS
    streams: int
    snippets_per_s: float
    dropped_snippets: int  # all sources
    lag_s: float  # the largest
    step_ms_p50: float  # per tick
    step_ms_p99: float
    emitted_at: float
    precision: str | None = field(default=None, metadata=_OPTIONAL)
    precision_reason: str | None = field(default=None, metadata=_OPTIONAL)
    source: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(eq=False)
class SourceLost(Event):
    """A source dropped out (or could not be opened); ``retry_in_s`` None: it is not tried again."""

    type: ClassVar[str] = SOURCE_LOST
    reason: str
    retry_in_s: float | None = None
    timestamp: float | None = field(default=None, metadata=_OPTIONAL)  # on the source's clock
    wall_time: float | None = field(default=None, metadata=_OPTIONAL)
    source: str | None = field(default=None, metadata=_OPTIONAL)


@dataclass(eq=False)
class SourceRestored(Event):
    """A lost source delivers again."""

    type: ClassVar[str] = SOURCE_RESTORED
    attempts: int
    downtime_s: float
    timestamp: float | None = field(default=None, metadata=_OPTIONAL)
    wall_time: float | None = field(default=None, metadata=_OPTIONAL)
    source: str | None = field(default=None, metadata=_OPTIONAL)


def segment_event(class_id: int, label: str, start: float, end: float, score: float, latency: float,
                  emitted_at: float | None = None) -> Segment:
    return Segment(int(class_id), label, _round(start), _round(end), round(float(score), 5),
                   _now() if emitted_at is None else emitted_at, _round(latency))


def segment_open_event(class_id: int, label: str, start: float, score: float,
                       emitted_at: float | None = None) -> SegmentOpen:
    return SegmentOpen(int(class_id), label, _round(start), round(float(score), 5),
                       _now() if emitted_at is None else emitted_at)


def alert_event(segment: Mapping[str, Any], min_score: float, emitted_at: float | None = None) -> Alert:
    """The alert a segment produced at its class's operating point ``min_score`` (the segment rides along)."""
    return Alert(segment["class"], segment["label"], segment["start"], segment["end"], segment["score"],
                 round(float(min_score), 5), dict(segment), _now() if emitted_at is None else emitted_at,
                 segment.get(SOURCE_KEY))


def stats_event(fps: float, snippets: int, dropped_frames: int, step_ms_p50: float, step_ms_p99: float) -> Stats:
    return Stats(round(float(fps), 2), int(snippets), int(dropped_frames), round(float(step_ms_p50), 3),
                 round(float(step_ms_p99), 3), _now())


def process_stats_event(streams: int, snippets_per_s: float, dropped_snippets: int, lag_s: float,
                        tick_ms_p50: float, tick_ms_p99: float) -> ProcessStats:
    """The process-wide ``stats`` of a many-stream engine (its ``source`` is :data:`PROCESS_SOURCE`)."""
    return ProcessStats(int(streams), round(float(snippets_per_s), 2), int(dropped_snippets), _round(lag_s),
                        round(float(tick_ms_p50), 3), round(float(tick_ms_p99), 3), _now(), source=PROCESS_SOURCE)


def from_source(events: list[Event], source: str) -> list[Event]:
    """Mark the events one stream of a many-stream engine produced with its ``source`` (in place; returned)."""
    for event in events:
        event.source = source
    return events


def new_event_id() -> str:
    """A fresh event id, ``<run token>-<n>``: unique across runs and threads of this process."""
    return f"{_RUN_TOKEN}-{next(_COUNTER)}"


def with_id(event: Event) -> Event:
    """The event with an ``id`` (a copy with a fresh one when it has none; the caller's dict is left alone)."""
    return event if ID_KEY in event else {**event, ID_KEY: new_event_id()}


def to_json_line(event: Event) -> str:
    """One compact JSON object and a newline; NaN/Inf (never expected) become null rather than invalid JSON."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}
    return json.dumps(clean, separators=(",", ":"), allow_nan=False) + "\n"


class StepStats:
    """Per-snippet step latencies and input rate, summarized into ``stats`` events."""

    def __init__(self, history: int = STEP_HISTORY):
        self._steps: deque[float] = deque(maxlen=history)
        self.snippets = 0
        self._frames_since = 0
        self._since = time.monotonic()

    def record(self, seconds_per_snippet: float, snippets: int, frames: int) -> None:
        self._steps.extend([seconds_per_snippet] * snippets)
        self.snippets += snippets
        self._frames_since += frames

    def percentiles_ms(self) -> tuple[float, float]:
        if not self._steps:
            return 0.0, 0.0
        p50, p99 = np.percentile(np.fromiter(self._steps, float), [50, 99]) * 1000.0
        return float(p50), float(p99)

    def due(self, every_s: float) -> bool:
        return every_s > 0 and time.monotonic() - self._since >= every_s

    def event(self, dropped_frames: int) -> Event:
        """The ``stats`` event for the interval since the last one (and start a new interval)."""
        now = time.monotonic()
        fps = self._frames_since / max(now - self._since, 1e-9)
        self._frames_since, self._since = 0, now
        return stats_event(fps, self.snippets, dropped_frames, *self.percentiles_ms())


_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (Segment, SegmentOpen, Alert, SourceLost,
                                                             SourceRestored)}


def event_from_dict(raw: Mapping[str, Any]) -> Event:
    """The typed event of a JSON object (as ``to_dict`` wrote it, e.g. by a server); ``stats`` objects become
    :class:`Stats` or, with ``streams``, :class:`ProcessStats`. Unknown keys (``id``) are left out."""
    kind = raw.get("type")
    cls = (ProcessStats if "streams" in raw else Stats) if kind == STATS else _TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}; known: {', '.join(EVENT_TYPES)}")
    values = {f.name: raw[f.metadata.get("key", f.name)] for f in dataclasses.fields(cls)
              if f.metadata.get("key", f.name) in raw}
    return cls(**values)
