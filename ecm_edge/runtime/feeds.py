"""Many sources into one ``StreamEngine``: a reader thread per source, one ticking loop (docs/design.md §7).

::

    from ecm_edge.runtime.feeds import run_sources
    from ecm_edge.runtime.source_specs import load_sources_file

    engine = StreamEngine.from_artifacts("runs/train/exp", extractor="tiny")
    for event in run_sources(engine, load_sources_file("sources.yaml"), stop=stop):
        print(event["source"], event["type"])

Threads: each source has its own *feed* thread that opens it, reads it (frames through the source's own reader
thread and bounded buffer, ``ecm_edge.runtime.sources``) and pushes into the engine, which only queues; the
caller's thread ticks the engine (``step``) whenever a feed has pushed, and at least every
:data:`IDLE_TICK_S` so that ``stats`` events stay due. A slow or dead source therefore never delays the others.

Bounds: nothing here queues without limit. Live sources keep only their newest frame (``stream.frame_policy``)
and the engine drops whole snippets of a source whose queue is full (counted per source); files and feature
files wait for room instead (a replay loses nothing), paced at their own clock unless ``realtime=False``.
Outside events (``source_lost`` / ``source_restored``) go to the engine's sinks at once and wait for the caller
in a bounded backlog.

Ends: a file or feature source that ends is flushed and removed, the others go on; the events end when every
source has ended (live sources only end on ``stop``), and then the engine is closed. A source whose reader fails
(a live source that stays down beyond ``stream.reconnect_attempts``, an unexpected error) is logged, reported as
``source_lost`` with ``retry_in_s: null``, removed, and named in the :class:`SourceFailure` raised once the
events are over.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ecm_edge.config import Config, apply_overrides
from ecm_edge.errors import ConfigError, EcmEdgeError
from ecm_edge.runtime import events as ev
from ecm_edge.runtime.source_specs import SourceSpec, check_unique
from ecm_edge.runtime.sources import (
    FeatureReplaySource,
    FeatureSnippet,
    ReconnectPolicy,
    VideoSource,
    open_source,
)

if TYPE_CHECKING:
    from ecm_edge.runtime.engine import StreamEngine

log = logging.getLogger("ecm_edge")
T = TypeVar("T")

IDLE_TICK_S = 0.1  # the loop ticks at least this often without input, so `stats` events come out when due
POLL_S = 0.1  # how often a waiting feed looks at the stop flag
STOP_JOIN_S = 1.0  # after a stop: how long the loop waits, in all, for the feeds to close their sources
NOTICE_BACKLOG = 256  # outside events (source_lost / source_restored) waiting for the caller; the oldest go first
RETRY_NEVER = None  # `retry_in_s` of a source_lost after which the source is not tried again


class SourceFailure(EcmEdgeError):
    """Sources that could not be opened or whose reader failed; one ``source 'ID': why`` part each."""

    def __init__(self, failures: Sequence[tuple[str, str]]):
        self.failures = list(failures)
        super().__init__("; ".join(f"source {source!r}: {reason}" for source, reason in self.failures))


@dataclass
class FeedTotals:
    """What the sources delivered in all, for the command's closing line."""

    snippets: int = 0  # snippets through the head (or flushed through it when the stream ended)
    dropped_snippets: int = 0  # dropped by the engine because a source's queue was full
    dropped_frames: int = 0  # stale frames replaced in live sources' buffers
    per_source: dict[str, int] = field(default_factory=dict)  # snippets per source id


class _Hub:
    """What the feeds and the loop share: the stop flag, the wake-ups both ways, and the outside events."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.pushed = threading.Event()  # a feed pushed, ended or reported: the loop should tick
        self.ticked = threading.Condition()  # the loop ticked: feeds waiting for queue room look again
        self.go = threading.Event()  # the feeds may start reading (set once every source was tried)
        self._notices: collections.deque[ev.Event] = collections.deque(maxlen=NOTICE_BACKLOG)
        self._notice_lock = threading.Lock()
        self._overflowed = False

    def wake(self) -> None:
        self.pushed.set()

    def post_notice(self, event: ev.Event) -> None:
        with self._notice_lock:
            if len(self._notices) == NOTICE_BACKLOG and not self._overflowed:
                self._overflowed = True  # the sinks still got every one; only the caller's copy is short
                log.warning("more than %d source events waiting for the caller; the oldest are skipped there",
                            NOTICE_BACKLOG)
            self._notices.append(event)
        self.wake()

    def take_notices(self) -> list[ev.Event]:
        with self._notice_lock:
            taken = list(self._notices)
            self._notices.clear()
        return taken

    def notify_tick(self) -> None:
        with self.ticked:
            self.ticked.notify_all()

    def wait_tick(self) -> None:
        with self.ticked:
            self.ticked.wait(POLL_S)


class _Feed:
    """One source's thread: open (with retries under keep-going), read, push into the engine, report."""

    def __init__(self, spec: SourceSpec, engine: StreamEngine, hub: _Hub, *, realtime: bool, keep_going: bool):
        self.spec, self.engine, self.hub = spec, engine, hub
        self.realtime, self.keep_going = realtime, keep_going
        self.config = source_config(engine.config, spec.overrides)
        self.queue_limit = engine.config.stream.queue_snippets  # one bound for every source of the engine
        self.tried = threading.Event()  # the first open attempt is over (opened or failed)
        self.done = threading.Event()  # the thread has finished: nothing more will be pushed
        self.failure: str | None = None  # why the source failed (None: it did not)
        self.dropped_frames = 0
        self._source: VideoSource | FeatureReplaySource | None = None
        self._origin: float | None = None  # monotonic time of source time 0 when pacing a file
        self._thread = threading.Thread(target=self._run, name=f"ecm-edge feed {spec.id}", daemon=True)

    # -- the thread -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:  # started
            self._thread.join(max(0.0, timeout))

    def _run(self) -> None:
        try:
            source = self._open_until_ready()
            if source is not None and self._wait_for_go():
                self._origin = time.monotonic()
                self._read(source)
        except EcmEdgeError as exc:
            if not self.hub.stop.is_set():  # after a stop, a refused push or a closed engine is no failure
                self._fail(str(exc))
        except Exception as exc:  # a bug or a library failure ends this source only, never the process
            log.debug("feed of source %r failed", self.spec.id, exc_info=True)
            self._fail(f"its reader failed unexpectedly ({type(exc).__name__}: {exc})")
        finally:
            self._close_source()
            self.tried.set()
            self.done.set()
            self.hub.wake()

    def _wait_for_go(self) -> bool:
        while not self.hub.go.wait(POLL_S):
            if self.hub.stop.is_set():
                return False
        return not self.hub.stop.is_set()

    def _read(self, source: VideoSource | FeatureReplaySource) -> None:
        if self.spec.kind == "features":
            while not self.hub.stop.is_set() and (item := source.read()) is not None:
                self._push_snippet(item)
            return
        while not self.hub.stop.is_set():
            try:
                frame = source.read(timeout=POLL_S)
            except TimeoutError:
                continue
            if frame is None:
                return
            self._push_frame(source, frame.image, frame.timestamp)

    def _push_snippet(self, item: FeatureSnippet) -> None:
        if not self._pace(item.end_time):
            return
        self._wait_for_room()
        if self._stopping_push(lambda: self.engine.push(self.spec.id, item.features, start_time=item.start_time,
                                                        end_times=[item.end_time])):
            self.hub.wake()

    def _push_frame(self, source: VideoSource, image: np.ndarray, timestamp: float) -> None:
        if not source.live:
            if not self._pace(timestamp):
                return
            self._wait_for_room()
        completed = self._stopping_push(lambda: self.engine.push_frames(self.spec.id, [image], [timestamp]))
        if source.dropped_frames != self.dropped_frames:
            self.dropped_frames = source.dropped_frames
            self._stopping_push(lambda: self.engine.set_dropped_frames(self.spec.id, self.dropped_frames))
        if completed:
            self.hub.wake()

    def _stopping_push(self, push: Callable[[], T]) -> T | int:
        """Run a push; after a stop the engine may already be closed, and a push it refuses is no error."""
        try:
            return push()
        except EcmEdgeError:
            if self.hub.stop.is_set():
                return 0
            raise

    def _pace(self, source_time: float) -> bool:
        """In real time, wait until ``source_time`` has passed since reading began; False when stopped."""
        if not self.realtime or self._origin is None:
            return not self.hub.stop.is_set()
        return not self.hub.stop.wait(max(0.0, self._origin + source_time - time.monotonic()))

    def _wait_for_room(self) -> None:
        """A file loses nothing: wait while the source's engine queue is full (the loop's next tick empties it)."""
        while not self.hub.stop.is_set() and self.engine.stats(self.spec.id).queued >= self.queue_limit:
            self.hub.wake()
            self.hub.wait_tick()

    # -- opening ----------------------------------------------------------------------------------------------
    def _open_until_ready(self) -> VideoSource | FeatureReplaySource | None:
        """The opened source; with keep-going a live source that cannot be opened is reported and tried again
        with backoff (None when stopped meanwhile). Without keep-going the first failure is the feed's failure."""
        try:
            source = self._open()
        except EcmEdgeError as exc:
            if not (self.keep_going and self.spec.live):
                raise  # recorded as the feed's failure before `tried` is set (start() reads it)
            self.tried.set()
            return self._retry_open(str(exc))
        self.tried.set()
        return source

    def _retry_open(self, reason: str) -> VideoSource | FeatureReplaySource | None:
        policy = ReconnectPolicy.from_config(self.config.stream)
        lost_at = time.monotonic()
        log.warning("source %r cannot be opened (%s); retrying in the background", self.spec.id, reason)
        self.notice(ev.SourceLost(reason, policy.delay(1)))
        attempt = 0
        while True:
            attempt += 1
            if self.hub.stop.wait(policy.delay(attempt)):
                return None
            try:
                source = self._open()
            except EcmEdgeError as exc:
                if policy.attempts and attempt >= policy.attempts:
                    raise EcmEdgeError(f"could not be opened after {attempt} attempts ({exc}); raise "
                                       "stream.reconnect_attempts (0 retries forever)") from None
                log.info("source %r: open attempt %d failed; next in %.1f s", self.spec.id, attempt,
                         policy.delay(attempt + 1))
                continue
            downtime = round(time.monotonic() - lost_at, 3)
            self.notice(ev.SourceRestored(attempt, downtime))
            log.warning("source %r opened after %.1f s (%d attempt(s))", self.spec.id, downtime, attempt)
            return source

    def _open(self) -> VideoSource | FeatureReplaySource:
        spec, stream = self.spec, self.config.stream
        if spec.kind == "features":  # paced here (_pace), so that files and features share one clock rule
            source: VideoSource | FeatureReplaySource = FeatureReplaySource(
                spec.target, realtime=False, snippet_seconds=self.config.data.snippet_seconds,
                feature_dim=self.engine.feature_dim)
        else:
            source = open_source(spec.target, policy=stream.frame_policy, config=stream,
                                 reconnect=ReconnectPolicy.from_config(stream), on_event=self.notice)
        self._source = source
        return source

    def _close_source(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()

    # -- reporting --------------------------------------------------------------------------------------------
    def notice(self, event: ev.Event) -> None:
        """An outside event of this source (its reader's source_lost / source_restored): to the sinks now, and
        to the caller with the next events."""
        event.source = self.spec.id
        try:
            self.engine.emit(event)
        except (EcmEdgeError, RuntimeError):  # the engine (its dispatcher) closed after a stop; the caller still gets it
            log.debug("source %r: %s after the engine closed", self.spec.id, event["type"])
        self.hub.post_notice(event)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        if self.keep_going or self.hub.go.is_set():  # without keep-going, failing at the start is start()'s error
            log.error("source %r stopped: %s", self.spec.id, reason)
            self.notice(ev.SourceLost(reason, RETRY_NEVER))


class SourceFeeds:
    """Sources run into one engine (module doc): :meth:`start` opens them, :meth:`events` ticks until the end.

    The engine is closed when the events end (or when :meth:`start` fails); its streams are added here, one per
    spec with the spec's overrides.
    """

    def __init__(self, engine: StreamEngine, specs: Sequence[SourceSpec], *, realtime: bool = True,
                 keep_going: bool = False, stop: threading.Event | None = None):
        check_unique(specs)
        self.engine, self.specs, self.keep_going = engine, list(specs), keep_going
        self.stop = stop if stop is not None else threading.Event()
        self.totals = FeedTotals()
        self._hub = _Hub(self.stop)
        self._feeds = [self._feed(spec, realtime, keep_going) for spec in specs]
        self._active = list(self._feeds)  # feeds whose stream is still in the engine
        self._closed = False

    def start(self) -> None:
        """Add a stream per source and start their feeds. Without keep-going, wait until every source was tried
        and raise :class:`SourceFailure` naming those that could not be opened (the engine is closed then)."""
        try:
            for feed in self._feeds:
                self._add_stream(feed.spec)
            for feed in self._feeds:
                feed.start()
            if not self.keep_going:
                self._wait_until_tried()
                failed = [(f.spec.id, f.failure) for f in self._feeds if f.failure is not None]
                if failed:
                    raise SourceFailure(failed)
        except BaseException:
            self._shut_down()
            raise
        self._hub.go.set()

    def events(self) -> Iterator[ev.Event]:
        """Every event as it happens: the engine's ticks, the sources' outside events, the ends of streams; the
        engine's last events once every source has ended or ``stop`` is set. Raises :class:`SourceFailure` at the
        end when a source failed on the way."""
        try:
            yield from self._loop()
            yield from self._finish()
        finally:
            self._shut_down()
        failed = [(f.spec.id, f.failure) for f in self._feeds if f.failure is not None]
        if failed:
            raise SourceFailure(failed)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> Iterator[ev.Event]:
        while self._active and not self.stop.is_set():
            self._hub.pushed.wait(IDLE_TICK_S)
            self._hub.pushed.clear()  # before the tick: a push during it wakes the next wait at once
            yield from self._hub.take_notices()
            ended = [feed for feed in self._active if feed.done.is_set()]
            yield from self.engine.step()
            self._hub.notify_tick()
            for feed in ended:
                yield from self._remove(feed)

    def _remove(self, feed: _Feed) -> list[ev.Event]:
        self._count(feed)
        self._active.remove(feed)
        return self.engine.remove_stream(feed.spec.id)

    def _finish(self) -> Iterator[ev.Event]:
        """Stop the feeds (they close their sources), then flush every stream left: the engine's last events."""
        self.stop.set()
        self._join_feeds()
        yield from self._hub.take_notices()
        for feed in self._active:
            self._count(feed)
        self._active.clear()
        self._closed = True
        yield from self.engine.close()

    def _count(self, feed: _Feed) -> None:
        """Add a source's counters to the totals before its stream goes (its queued snippets are flushed)."""
        stats = self.engine.stats(feed.spec.id)
        snippets = stats.processed + stats.queued
        self.totals.per_source[feed.spec.id] = snippets
        self.totals.snippets += snippets
        self.totals.dropped_snippets += stats.dropped
        self.totals.dropped_frames += feed.dropped_frames

    # -- start and end ----------------------------------------------------------------------------------------
    def _feed(self, spec: SourceSpec, realtime: bool, keep_going: bool) -> _Feed:
        try:
            return _Feed(spec, self.engine, self._hub, realtime=realtime, keep_going=keep_going)
        except ConfigError as exc:  # the source's own overrides do not fit the engine's config
            raise ConfigError(f"source {spec.id!r}: {exc}") from None

    def _add_stream(self, spec: SourceSpec) -> None:
        """The source's stream (the engine checks its overrides, naming the source)."""
        self.engine.add_stream(spec.id, spec.overrides)

    def _wait_until_tried(self) -> None:
        for feed in self._feeds:
            while not feed.tried.wait(POLL_S):
                if self.stop.is_set():
                    return

    def _join_feeds(self) -> None:
        deadline = time.monotonic() + STOP_JOIN_S
        for feed in self._feeds:
            feed.join(deadline - time.monotonic())

    def _shut_down(self) -> None:
        """Every exit path: the feeds stop and the engine is closed (its events went to its sinks)."""
        self.stop.set()
        self._hub.go.set()
        if not self._closed:
            self._closed = True
            self._join_feeds()
            self.engine.close()


def run_sources(engine: StreamEngine, specs: Sequence[SourceSpec], *, realtime: bool = True, keep_going: bool = False,
                stop: threading.Event | None = None) -> Iterator[ev.Event]:
    """Run ``specs`` into ``engine`` and yield the events as they happen (:class:`SourceFeeds`, module doc).

    ``realtime``: files and feature files play at their own clock (False: as fast as the engine takes them).
    ``keep_going``: a source that cannot be opened does not stop the start; live ones are retried with backoff.
    ``stop``: set it to end every source, flush every stream and end the events. The engine is closed at the end.
    """
    feeds = SourceFeeds(engine, specs, realtime=realtime, keep_going=keep_going, stop=stop)
    feeds.start()
    yield from feeds.events()


def source_config(config: Config, overrides: Sequence[str]) -> Config:
    """The config one source runs with: the engine's, refined by the source's own overrides (a copy)."""
    return apply_overrides(copy.deepcopy(config), overrides) if overrides else config
