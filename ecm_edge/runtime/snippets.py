"""Snippet assembly: frames at any rate in, 16-frame snippets at 25 fps out (docs/design.md §4, §7).

The output is a regular 25 fps grid that starts at the first frame's timestamp; each grid slot takes the source
frame nearest to it in time (ties go to the earlier frame), so a 30 fps source skips one frame in six and a
12.5 fps source shows every frame twice, as a player re-timing the video would. Sixteen consecutive slots form
one snippet, and snippet ``i`` of a gapless source covers ``[t0 + 0.64 i, t0 + 0.64 (i + 1))``.

A slot is decided as soon as a frame at or after its time arrives, so assembly adds no latency beyond one
source frame. A gap between source frames longer than ``stream.max_frame_gap_s`` (a reconnect, a stalled
camera) is not filled with a stale frame: the unfinished snippet is dropped and the grid restarts at the next
frame, while snippet indices keep counting.

An optional ``transform`` (the feature extractor's per-frame preparation, e.g. resize and crop) is applied once
per source frame that fills a slot, so full-resolution frames are never held sixteen at a time.

:class:`SourceIntake` is what a stream front end keeps of one source before a tick (its bounded snippet queue,
its clock, its assembler); :func:`extract_queued` extracts the queued frame snippets of many sources in one call.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ecm_edge.config import DataConfig, StreamConfig
from ecm_edge.errors import DataError
from ecm_edge.runtime.sources import Frame

logger = logging.getLogger("ecm_edge")

_TIME_EPS = 1e-9  # seconds; slot times and frame times closer than this are the same instant


def snippet_times(clock: float, n: int, snippet_seconds: float, start_time: float | None = None,
                  end_times: Sequence[float] | None = None, where: str = "push",
                  start_times: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """Source start and end of ``n`` pushed snippets of features: consecutive snippets from ``start_time`` (default:
    where the previous push ended, ``clock``), each ``snippet_seconds`` long unless ``end_times`` gives their ends
    (then each starts where the previous one ended). ``start_times`` with ``end_times`` gives both exactly (a remote
    caller forwarding times it already computed: they arrive unchanged to the last bit). ``where`` names the caller
    in the error of a length mismatch."""
    if start_times is not None:
        if end_times is None or len(start_times) != n or len(end_times) != n:
            raise DataError(f"{where} got {n} snippets, {len(start_times)} start times and "
                            f"{'no' if end_times is None else len(end_times)} end times; give both, one per snippet")
        return [float(t) for t in start_times], [float(t) for t in end_times]
    first = clock if start_time is None else float(start_time)
    if end_times is not None:
        if len(end_times) != n:
            raise DataError(f"{where} got {n} snippets but {len(end_times)} end times")
        ends = [float(t) for t in end_times]
        return [first, *ends[:-1]], ends
    starts = [first + i * snippet_seconds for i in range(n)]
    return starts, [s + snippet_seconds for s in starts]


@dataclass
class Snippet:
    """Sixteen frames on the 25 fps grid and the time span they cover."""

    frames: np.ndarray  # [16, H, W, 3] uint8 (BGR source frames, or the extractor's prepared frames)
    start_time: float  # seconds on the source's clock, time of the first slot
    end_time: float  # start_time + 16 / 25
    index: int  # 0, 1, 2, ... in order of assembly
    prepared_for: str | None = None  # the extractor preparation applied to the frames (None: raw frames)


class _HeldFrame:
    """A source frame kept for the next slots, transformed at most once and only if a slot uses it."""

    __slots__ = ("_prepared", "_transform", "image", "timestamp")

    def __init__(self, frame: Frame, transform: Callable[[np.ndarray], np.ndarray] | None):
        self.image = frame.image
        self.timestamp = frame.timestamp
        self._transform = transform
        self._prepared: np.ndarray | None = None

    def prepared(self) -> np.ndarray:
        if self._prepared is None:
            self._prepared = self.image if self._transform is None else self._transform(self.image)
        return self._prepared


class SnippetAssembler:
    """Turns a frame stream into snippets; push frames in timestamp order, get finished snippets back."""

    def __init__(self, fps: float | None = None, snippet_frames: int | None = None, *,
                 max_gap_s: float | None = None, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 prepared_for: str | None = None):
        data, stream = DataConfig(), StreamConfig()
        self.fps = float(fps or data.feature_fps)
        self.snippet_frames = int(snippet_frames or data.snippet_frames)
        self.max_gap_s = float(max_gap_s if max_gap_s is not None else stream.max_frame_gap_s)
        self.transform = transform
        self.prepared_for = prepared_for if transform is not None else None
        self.frames_in = 0  # source frames pushed
        self.frames_skipped = 0  # source frames out of order (not newer than the previous one), ignored
        self.gaps = 0  # grid restarts after a gap longer than max_gap_s
        self.snippets_out = 0
        self._reset_grid()

    @classmethod
    def from_config(cls, data: DataConfig, stream: StreamConfig | None = None, *,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    prepared_for: str | None = None) -> SnippetAssembler:
        stream = stream or StreamConfig()
        return cls(data.feature_fps, data.snippet_frames, max_gap_s=stream.max_frame_gap_s, transform=transform,
                   prepared_for=prepared_for)

    @property
    def snippet_seconds(self) -> float:
        return self.snippet_frames / self.fps

    def push(self, frame: Frame) -> list[Snippet]:
        """Add one source frame; returns the snippets it completed (usually none or one)."""
        self.frames_in += 1
        held = self._previous
        if held is not None:
            if frame.timestamp <= held.timestamp:
                self.frames_skipped += 1
                logger.debug("frame %d at %.3f s is not newer than the previous one; skipped", frame.index,
                             frame.timestamp)
                return []
            if frame.timestamp - held.timestamp > self.max_gap_s:
                self._restart_after_gap(held.timestamp, frame.timestamp)
                held = None
        if self._origin is None:
            self._origin = frame.timestamp
        current = _HeldFrame(frame, self.transform)
        done: list[Snippet] = []
        while (slot_time := self._slot_time(self._next_slot)) <= frame.timestamp + _TIME_EPS:
            chosen = current if held is None or frame.timestamp - slot_time < slot_time - held.timestamp - _TIME_EPS \
                else held
            self._slots.append(chosen.prepared())
            self._next_slot += 1
            if len(self._slots) == self.snippet_frames:
                done.append(self._finish_snippet())
        self._previous = current
        return done

    def flush(self, pad: bool = False) -> list[Snippet]:
        """End of stream: the unfinished snippet, padded with its last frame when ``pad``, else dropped."""
        done: list[Snippet] = []
        if pad and self._slots:
            while len(self._slots) < self.snippet_frames:
                self._slots.append(self._slots[-1])
            done.append(self._finish_snippet())
        self._reset_grid()
        return done

    def _slot_time(self, slot: int) -> float:
        return self._origin + slot / self.fps  # computed directly, so no rounding error accumulates

    def _finish_snippet(self) -> Snippet:
        first_slot = self._next_slot - self.snippet_frames
        start = self._slot_time(first_slot)
        snippet = Snippet(np.stack(self._slots), start, start + self.snippet_seconds, self.snippets_out,
                          self.prepared_for)
        self._slots = []
        self.snippets_out += 1
        return snippet

    def _restart_after_gap(self, last: float, now: float) -> None:
        self.gaps += 1
        logger.info("gap of %.2f s between frames at %.2f s; %d buffered frame(s) dropped, snippet grid restarts",
                    now - last, last, len(self._slots))
        self._reset_grid()

    def _reset_grid(self) -> None:
        self._origin: float | None = None
        self._next_slot = 0
        self._slots: list[np.ndarray] = []
        self._previous: _HeldFrame | None = None


# -- a source's snippets between ticks --------------------------------------------------------------------------
@dataclass
class QueuedSnippet:
    """A snippet waiting for a tick: its features (or, for frames, the assembled snippet) and source times."""

    features: np.ndarray | None  # [D]; None until a frame snippet is extracted
    start: float
    end: float
    pushed_at: float = 0.0  # time.monotonic() of the push
    clip: Snippet | None = None


class Counts(Protocol):
    """What a source's counters keep of its pushes."""

    received: int
    dropped: int


@dataclass(kw_only=True)
class SourceIntake:
    """What a stream front end (the engine, the Triton client) keeps of one source before a tick: the bounded
    queue of its snippets, the clock its feature pushes continue from, and the assembly of its frames into
    snippets (under the source's own lock, so sources push from their own threads)."""

    queue: deque[QueuedSnippet] = field(default_factory=deque)
    clock: float = 0.0  # where the next snippet starts when the caller gives no time
    assembler: Any = None  # frames → snippets, made on the first frames
    frame_index: int = 0
    frame_lock: threading.Lock = field(default_factory=threading.Lock)

    def next_times(self, n: int, snippet_seconds: float, start_time: float | None,
                   end_times: Sequence[float] | None, where: str,
                   start_times: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
        """The times of ``n`` pushed snippets (:func:`snippet_times`); the clock moves to the last one's end."""
        starts, ends = snippet_times(self.clock, n, snippet_seconds, start_time, end_times, where=where,
                                     start_times=start_times)
        if n:
            self.clock = ends[-1]
        return starts, ends

    def assemble(self, frames: Sequence[np.ndarray] | np.ndarray, timestamps: Sequence[float],
                 make_assembler: Callable[[], SnippetAssembler]) -> list[Snippet]:
        """The snippets these frames complete (the assembler made on first use)."""
        with self.frame_lock:
            if self.assembler is None:
                self.assembler = make_assembler()
            clips: list[Snippet] = []
            for image, stamp in zip(frames, timestamps, strict=True):
                clips += self.assembler.push(Frame(np.asarray(image), float(stamp), self.frame_index))
                self.frame_index += 1
        return clips

    def drop_partial_snippet(self) -> None:
        """The end of the source's stream: frames of an unfinished snippet are dropped."""
        with self.frame_lock:
            if self.assembler is not None:
                self.assembler.flush(pad=False)

    def enqueue(self, items: list[QueuedSnippet], limit: int, counts: Counts) -> int:
        """Append to the bounded queue (the caller holds the front end's queue lock); count what was received and
        what did not fit. Returns how many were queued."""
        room = max(0, limit - len(self.queue))
        self.queue.extend(items[:room])
        counts.received += len(items)
        counts.dropped += max(0, len(items) - room)
        return min(room, len(items))


def extract_queued(intakes: Iterable[SourceIntake], extractor: Callable[[], Any], lock: threading.Lock) -> None:
    """Features of every queued frame snippet of ``intakes``, all in one call of the extractor (``extractor()``
    gives it, asked only when there is a snippet to extract; ``lock``, the front end's queue lock, is held only
    while the snippets are gathered)."""
    with lock:
        waiting = [item for intake in intakes for item in intake.queue if item.features is None]
    if not waiting:
        return
    features = np.asarray(extractor().extract([item.clip for item in waiting]), np.float32)
    for item, row in zip(waiting, features, strict=True):
        item.features, item.clip = row, None
