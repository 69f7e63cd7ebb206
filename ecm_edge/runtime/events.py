"""The streaming runtime's events: plain JSON objects, one per line on the wire.

Types and fields (times in seconds; ``start``/``end``/``time`` on the source's clock, ``emitted_at`` UNIX time):

- ``segment``: a closed, final detection — ``class`` (index), ``label``, ``start``, ``end``, ``score``,
  ``emitted_at`` and ``latency`` (source time between the segment's end and the snippet whose arrival let it be
  emitted: the ±2-snippet receptive field plus the OIC outer window). Never revised once emitted.
- ``segment_open``: an early alert that a class became active (optional, ``stream.emit_open``) — ``class``,
  ``label``, ``start``, ``score`` (the causal video score), ``emitted_at``.
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

import itertools
import json
import math
import time
import uuid
from collections import deque
from typing import Any

import numpy as np

Event = dict[str, Any]

SEGMENT = "segment"
SEGMENT_OPEN = "segment_open"
SOURCE_LOST = "source_lost"
SOURCE_RESTORED = "source_restored"
STATS = "stats"

STEP_HISTORY = 1000  # step latencies kept for the percentiles of `stats`

ID_KEY = "id"
SOURCE_KEY = "source"
PROCESS_SOURCE = "*"  # the source of the process-wide stats event
_RUN_TOKEN = uuid.uuid4().hex[:12]  # one per process: ids of different runs never collide
_COUNTER = itertools.count()  # next() is atomic under the GIL: ids stay unique across threads


def _round(seconds: float) -> float:
    return round(float(seconds), 3)


def segment_event(class_id: int, label: str, start: float, end: float, score: float, latency: float,
                  emitted_at: float | None = None) -> Event:
    return {"type": SEGMENT, "class": int(class_id), "label": label, "start": _round(start), "end": _round(end),
            "score": round(float(score), 5), "emitted_at": time.time() if emitted_at is None else emitted_at,
            "latency": _round(latency)}


def segment_open_event(class_id: int, label: str, start: float, score: float,
                       emitted_at: float | None = None) -> Event:
    return {"type": SEGMENT_OPEN, "class": int(class_id), "label": label, "start": _round(start),
            "score": round(float(score), 5), "emitted_at": time.time() if emitted_at is None else emitted_at}


def stats_event(fps: float, snippets: int, dropped_frames: int, step_ms_p50: float, step_ms_p99: float) -> Event:
    return {"type": STATS, "fps": round(float(fps), 2), "snippets": int(snippets),
            "dropped_frames": int(dropped_frames), "step_ms_p50": round(float(step_ms_p50), 3),
            "step_ms_p99": round(float(step_ms_p99), 3), "emitted_at": time.time()}


def process_stats_event(streams: int, snippets_per_s: float, dropped_snippets: int, lag_s: float,
                        tick_ms_p50: float, tick_ms_p99: float) -> Event:
    """The process-wide ``stats`` of a many-stream engine (its ``source`` is :data:`PROCESS_SOURCE`)."""
    return {"type": STATS, SOURCE_KEY: PROCESS_SOURCE, "streams": int(streams),
            "snippets_per_s": round(float(snippets_per_s), 2), "dropped_snippets": int(dropped_snippets),
            "lag_s": _round(lag_s), "step_ms_p50": round(float(tick_ms_p50), 3),
            "step_ms_p99": round(float(tick_ms_p99), 3), "emitted_at": time.time()}


def from_source(events: list[Event], source: str) -> list[Event]:
    """Mark the events one stream of a many-stream engine produced with its ``source`` (in place; returned)."""
    for event in events:
        event[SOURCE_KEY] = source
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
