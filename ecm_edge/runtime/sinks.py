"""Where events go: JSONL on stdout or in a file, an HTTP webhook, Python callbacks.

Every sink is a context manager (``with JsonlSink("events.jsonl") as sink:``) that flushes and closes on every
exit path. :class:`EventDispatcher` is the writer thread of the streaming runtime: the pipeline hands it events
through a bounded queue and goes on; the thread feeds every sink, and a sink that raises is logged and skipped,
never allowed to stop the stream.

:class:`WebhookSink` never drops an event silently: each event is POSTed (one JSON object per request) with
retries and exponential backoff from its own thread; events it cannot deliver — receiver down, queue full — are
appended to a spool file (JSONL) and re-sent, oldest first, before anything newer once the receiver answers
again. A spool left by an earlier run is re-sent the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from ecm_edge.errors import ConfigError
from ecm_edge.io import atomic_write_bytes
from ecm_edge.runtime.events import Event, to_json_line

log = logging.getLogger("ecm_edge")

_STOP = object()
_CLOSING_POLL_S = 0.05  # how often a closing webhook writer looks whether its queue is empty


def log_failure(count: int, message: str, *args: object) -> None:
    """Log a repeated failure without flooding: the first with its traceback, then at 10, 100, 1000, ..."""
    if count == 1:
        log.exception(message, *args)
    elif math.log10(count).is_integer():
        log.error(message + " (%d failures so far)", *args, count)


class Sink:
    """Base of the sinks: ``write(event)``, ``close()``, and the context-manager protocol."""

    def write(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release; safe to call twice."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlSink(Sink):
    """One JSON object per line, flushed per event; ``"-"`` is stdout, a path is opened for appending.

    When the reader of a pipe goes away (``ecm-edge stream | head``), :attr:`closed_by_reader` is set, one warning
    is logged and further events are not written there.
    """

    def __init__(self, target: str | Path | IO[str] = "-"):
        if isinstance(target, (str, Path)) and str(target) == "-":
            self._file, self._owned, self.path = sys.stdout, False, None
        elif isinstance(target, (str, Path)):
            self.path = Path(target)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file, self._owned = open(self.path, "a", encoding="utf-8"), True  # noqa: SIM115
        else:
            self._file, self._owned, self.path = target, False, None
        self._lock = threading.Lock()
        self.closed_by_reader = False

    def write(self, event: Event) -> None:
        line = to_json_line(event)
        with self._lock:
            if self.closed_by_reader:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except BrokenPipeError:
                self.closed_by_reader = True
                log.warning("the reader of %s went away; no more events are written there",
                            self.path or getattr(self._file, "name", "the output"))

    def close(self) -> None:
        with self._lock:
            if self._owned and not self._file.closed:
                self._file.close()
            elif not self._owned:
                with contextlib.suppress(ValueError, BrokenPipeError):  # closed by the caller or the reader
                    self._file.flush()


class CallbackSink(Sink):
    """Calls ``fn(event)``; an exception is logged with its traceback and the stream goes on."""

    def __init__(self, fn: Callable[[Event], Any]):
        self.fn = fn
        self.failures = 0

    def write(self, event: Event) -> None:
        try:
            self.fn(event)
        except Exception:
            self.failures += 1
            log_failure(self.failures, "event callback %s failed on a %s event; the stream goes on",
                        getattr(self.fn, "__qualname__", repr(self.fn)), event.get("type"))


class WebhookSink(Sink):
    """HTTP POST per event from a writer thread, with retries, a bounded queue and a spool file."""

    def __init__(self, url: str, spool: str | Path, *, timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0, queue_size: int = 1000,
                 close_timeout_s: float = 10.0):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url, self.spool = url, Path(spool)
        self.timeout_s, self.retries = timeout_s, max(1, retries)
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.close_timeout_s = close_timeout_s  # delivery time granted at close before the rest is spooled
        self.delivered = 0  # events POSTed successfully (spooled ones included once re-sent)
        self.spooled = 0  # events written to the spool file by this sink
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._spool_lock = threading.Lock()
        self._closing = threading.Event()  # no new events: later writes go straight to the spool
        self._abort = threading.Event()  # close ran out of time: spool what is left without trying
        self._delay = backoff_s
        self._next_probe = 0.0  # monotonic time before which a down receiver is not tried again
        self._thread = threading.Thread(target=self._run, name="ecm-edge-webhook", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------------------------
    def write(self, event: Event) -> None:
        line = to_json_line(event).encode("utf-8")
        if self._closing.is_set():
            self._append_spool([line])
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            log.warning("webhook queue full (%d events); spooling to %s", self._queue.maxsize, self.spool)
            self._append_spool([line])

    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what is queued within ``timeout_s`` (default ``close_timeout_s``), spool the rest, stop."""
        if self._closing.is_set():
            return
        self._closing.set()
        with contextlib.suppress(queue.Full):  # a full queue: the writer stops once it has emptied it
            self._queue.put_nowait(_STOP)
        self._thread.join(self.close_timeout_s if timeout_s is None else timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join()
        self._append_spool(self._leftovers())  # written while the writer stopped
        if self.spool.exists():
            log.warning("webhook %s: %d undelivered events kept in %s; they are sent first on the next run",
                        self.url, self.spool_size(), self.spool)

    def spool_size(self) -> int:
        """Events waiting in the spool file."""
        with self._spool_lock:
            return len(self._spool_lines())

    # -- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_wait())
            except queue.Empty:
                self._resend_spool()
                if self._closing.is_set() and self._queue.empty():
                    return
                continue
            if item is _STOP:
                self._resend_spool()
                return
            try:
                self._deliver(item)
            except Exception:  # e.g. the spool file cannot be written: say so with the event itself
                log.exception("webhook event could neither be delivered nor spooled: %s", item.decode().strip())

    def _idle_wait(self) -> float | None:
        if self._closing.is_set():
            return _CLOSING_POLL_S
        if not self.spool.exists():
            return None
        return max(0.01, self._next_probe - time.monotonic())

    def _deliver(self, line: bytes) -> None:
        if self._abort.is_set() or (self.spool.exists() and not self._resend_spool()):
            self._append_spool([line])  # keep the order: older spooled events go out first
            return
        if self._post_with_retries(line, self.retries):
            self.delivered += 1
        else:
            self._append_spool([line])
            self._mark_down()

    def _post_with_retries(self, line: bytes, attempts: int) -> bool:
        delay = self.backoff_s
        for attempt in range(attempts):
            error = self._post(line)
            if error is None:
                self._delay = self.backoff_s
                return True
            log.debug("webhook POST to %s failed (%s), attempt %d/%d", self.url, error, attempt + 1, attempts)
            if attempt + 1 < attempts:
                if self._abort.wait(delay):  # close ran out of time: the event goes to the spool
                    break
                delay = min(delay * 2, self.backoff_max_s)
        log.warning("webhook %s unreachable after %d attempts (%s); events go to %s until it answers",
                    self.url, attempts, error, self.spool)
        return False

    def _resend_spool(self) -> bool:
        """Re-send spooled events oldest first; True when the spool is empty afterwards."""
        if not self.spool.exists():
            return True
        if self._abort.is_set() or time.monotonic() < self._next_probe:
            return False
        with self._spool_lock:
            lines = self._spool_lines()
            sent = 0
            for line in lines:
                if self._post(line) is not None:
                    break
                sent += 1
            self.delivered += sent
            rest = lines[sent:]
            if rest:
                atomic_write_bytes(self.spool, b"".join(rest))
            else:
                self.spool.unlink(missing_ok=True)
        if rest:
            self._mark_down()
            return False
        if sent:
            log.info("webhook %s is back: re-sent %d spooled events", self.url, sent)
        self._delay = self.backoff_s
        return True

    def _mark_down(self) -> None:
        self._next_probe = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.backoff_max_s)

    def _post(self, line: bytes) -> str | None:
        """POST one event; None on a 2xx answer, else what went wrong."""
        request = urllib.request.Request(self.url, data=line.rstrip(b"\n"), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))

    def _leftovers(self) -> list[bytes]:
        lines = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return lines
            if item is not _STOP:
                lines.append(item)

    # -- the spool file ---------------------------------------------------------------------------------------
    def _spool_lines(self) -> list[bytes]:
        if not self.spool.exists():
            return []
        return [line if line.endswith(b"\n") else line + b"\n"
                for line in self.spool.read_bytes().splitlines(keepends=True) if line.strip()]

    def _append_spool(self, lines: Iterable[bytes]) -> None:
        lines = list(lines)
        if not lines:
            return
        with self._spool_lock:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool, "ab") as f:
                f.write(b"".join(lines))
                f.flush()
            self.spooled += len(lines)


class EventDispatcher:
    """The writer thread: drains a bounded event queue into every sink, isolating sink failures."""

    def __init__(self, sinks: Iterable[Sink] = (), queue_size: int = 1024):
        self._sinks: list[Sink] = list(sinks)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failures: dict[int, int] = {}  # id(sink) -> failed writes

    def add(self, sink: Sink) -> Sink:
        with self._lock:
            self._sinks = [*self._sinks, sink]
        return sink

    @property
    def sinks(self) -> list[Sink]:
        return list(self._sinks)

    def publish(self, events: Iterable[Event]) -> None:
        """Queue events for the sinks (waits while the queue is full: events are never dropped here)."""
        if self._closed:
            raise RuntimeError("the event dispatcher is closed")
        for event in events:
            self._ensure_thread()
            self._queue.put(event)

    def drain(self) -> None:
        """Wait until every queued event has been handed to every sink."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Deliver what is queued, stop the thread, close the sinks."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %r failed", sink)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ecm-edge-events", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is _STOP:
                    return
                for sink in self._sinks:
                    try:
                        sink.write(event)
                    except Exception:
                        count = self._failures[id(sink)] = self._failures.get(id(sink), 0) + 1
                        log_failure(count, "sink %s failed on a %s event; the stream goes on", type(sink).__name__,
                                    event.get("type"))
            finally:
                self._queue.task_done()
