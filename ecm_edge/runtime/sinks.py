"""Where events go: JSONL on stdout or in a file, an HTTP webhook, Python callbacks.

Every sink is a context manager (``with JsonlSink("events.jsonl") as sink:``) that flushes and closes on every
exit path. :class:`EventDispatcher` is the writer thread of the streaming runtime: the pipeline hands it events
through a bounded queue and goes on; the thread feeds every sink, and a sink that fails is logged (one line; the
traceback only at debug level) and skipped, never allowed to stop the stream. What a sink could not write is
counted and reported by :meth:`EventDispatcher.losses` (``ecm-edge stream`` then exits 1 with one line).

Every sink chooses the event types it receives (``types={"segment", "alert"}``; None: all of them,
:data:`~ecm_edge.runtime.events.EVENT_TYPES`); the dispatcher filters, so a sink class needs nothing for it.
:func:`parse_event_types` turns a command-line list (``segment,alert``) into that set.

Events on the wire (JSONL, webhook, MQTT) carry an ``id`` (:func:`~ecm_edge.runtime.events.with_id`), assigned once
per event by the dispatcher, so a webhook retry or spool re-send repeats the same id.

:class:`WebhookSink` never drops an event silently: each event is POSTed (one JSON object per request, its id
also as the ``Idempotency-Key`` header) with retries and exponential backoff from its own thread; events it
cannot deliver — receiver down, queue full — are appended to a spool file (JSONL) and re-sent, oldest first,
before anything newer once the receiver answers again. A spool left by an earlier run is re-sent the same way.
The spool is read line by line from a remembered offset, never whole; when it cannot be written either (disk
full), events wait in a bounded in-memory backlog, and beyond that the oldest are dropped and counted.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import hashlib
import http.client
import json
import logging
import math
import os
import queue
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ecm_edge.errors import ConfigError, EcmEdgeError
from ecm_edge.io import atomic_path
from ecm_edge.runtime.events import EVENT_TYPES, ID_KEY, Event, to_json_line, with_id

log = logging.getLogger("ecm_edge")

_STOP = object()
_CLOSING_POLL_S = 0.05  # how often a closing webhook writer looks whether its queue is empty
_ABORT_GRACE_S = 1.0  # after close stopped waiting: how long the writer gets to hand over what it holds
SPOOL_LINE_MAX = 1 << 20  # bytes; a longer spool line is not an event of ours and is skipped
MEMORY_BACKLOG = 10_000  # events held in memory while the spool cannot be written; beyond, the oldest go
_COPY_CHUNK = 1 << 20  # bytes per read when a spool is counted or compacted
_FRONT, _BACKLOG = -1, -2  # where a handed-out spool line came from, when not from the file (file: offset >= 0)


def describe_error(exc: BaseException | None) -> str:
    """A short reason for a message: the OS's words for an OSError (``No space left on device``)."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def log_failure(count: int, what: str) -> None:
    """Log a repeated failure without flooding: one line at the 1st, 10th, 100th, ... failure.

    Call it inside the ``except`` block: the error's reason goes into the line, its traceback only to the debug
    level (``--debug``).
    """
    if count != 1 and not math.log10(count).is_integer():
        return
    so_far = "" if count == 1 else f" ({count} failures so far)"
    log.error("%s (%s); the stream goes on%s", what, describe_error(sys.exc_info()[1]), so_far)
    log.debug("traceback of that failure:", exc_info=True)


@dataclass(frozen=True)
class SinkLoss:
    """Events a sink could not write: how many, where to, and why (the last error)."""

    count: int
    where: str
    reason: str
    verb: str = "not written to"

    def __str__(self) -> str:
        return f"{self.count} event{'' if self.count == 1 else 's'} {self.verb} {self.where} ({self.reason})"


ALL_TYPES = "all"  # the word for every event type in a command-line list


def event_types(types: Iterable[str] | None) -> frozenset[str] | None:
    """The event types a sink receives, checked against :data:`EVENT_TYPES` (None: every type)."""
    if types is None:
        return None
    if isinstance(types, str):
        raise TypeError("give event types as a set of names, e.g. {'segment', 'alert'} (parse_event_types "
                        "reads 'segment,alert')")
    chosen = frozenset(types)
    unknown = sorted(chosen - set(EVENT_TYPES))
    if unknown:
        raise ConfigError(_unknown_types_message(unknown, ", ".join(sorted(chosen))))
    return chosen


def parse_event_types(spec: str | None) -> frozenset[str] | None:
    """``"segment,alert"`` → ``{"segment", "alert"}`` for a sink's ``types``; None, ``""`` or ``"all"`` → None
    (every type). An unknown name is a :class:`ConfigError` listing the known ones (and the closest)."""
    if spec is None or spec.strip() in ("", ALL_TYPES):
        return None
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVENT_TYPES]
    if unknown:
        raise ConfigError(_unknown_types_message(unknown, spec))
    return frozenset(names)


def _unknown_types_message(unknown: list[str], spec: str) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, EVENT_TYPES, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"unknown event type {', '.join(hints)} in {spec!r}; the types are {', '.join(EVENT_TYPES)} "
            f"(comma-separated, or {ALL_TYPES!r} for every type)")


class Sink:
    """Base of the sinks: ``write(event)``, ``close()``, and the context-manager protocol.

    ``wire`` sinks serialize events and get them with their ``id``; the others (callbacks) get the event dicts
    the pipeline returns. ``types`` is the set of event types the sink receives (None: all); the
    :class:`EventDispatcher` applies it through :meth:`accepts`, so subclasses only pass it on.
    """

    wire = False
    types: frozenset[str] | None = None  # a subclass that does not call __init__ receives every type

    def __init__(self, types: Iterable[str] | None = None):
        self.types = event_types(types)

    def accepts(self, event: Event) -> bool:
        """Whether this sink receives ``event`` (its type is one of :attr:`types`)."""
        return self.types is None or event.get("type") in self.types

    def write(self, event: Event) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release; safe to call twice."""

    def loss(self) -> SinkLoss | None:
        """What this sink failed to write so far (None: nothing lost)."""
        return None

    def hurry(self, grace_s: float) -> None:
        """A stop was requested: :meth:`close` must not take longer than about ``grace_s`` from now."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonlSink(Sink):
    """One JSON object per line, written per event; ``"-"`` is stdout, a path is opened for appending.

    Files and stdout are written unbuffered through their file descriptor, so a failed write (disk full) loses
    exactly its own event, which is counted (:meth:`loss`), and the next event is tried again. When the reader of
    a pipe goes away (``ecm-edge stream | head``), :attr:`closed_by_reader` is set, one warning is logged and
    further events are not written there (not a loss: the reader chose to leave).
    """

    wire = True

    def __init__(self, target: str | Path | IO[str] = "-", *, types: Iterable[str] | None = None):
        super().__init__(types)
        self._fd: int | None = None  # written with os.write (files, stdout)
        self._text: IO[str] | None = None  # a stream without a file descriptor (StringIO, captured stdout)
        self._owned = False
        if isinstance(target, (str, Path)) and str(target) == "-":
            self.path, self.where = None, "stdout"
            self._attach(sys.stdout, use_fd=True)
        elif isinstance(target, (str, Path)):
            self.path = Path(target)
            self.where = str(self.path)
            self._fd, self._owned = _open_for_append(self.path), True
        else:
            self.path, self.where = None, str(getattr(target, "name", "the output"))
            self._attach(target, use_fd=False)
        self._lock = threading.Lock()
        self._partial = False  # the last failed write left half a line: start the next on a new line
        self.closed_by_reader = False
        self.written = 0  # events written
        self.lost = 0  # events that could not be written
        self.error: str | None = None  # why the last one could not

    def _attach(self, stream: IO[str], use_fd: bool) -> None:
        """Write to ``stream``: through its descriptor when asked and it has one, else through the stream."""
        fd = None
        if use_fd:
            with contextlib.suppress(AttributeError, OSError, ValueError):  # io.UnsupportedOperation
                fd = stream.fileno()
        if fd is None:
            self._text = stream
            return
        with contextlib.suppress(OSError, ValueError):
            stream.flush()  # what was printed before goes first
        self._fd = fd

    def write(self, event: Event) -> None:
        data = to_json_line(event)
        with self._lock:
            if self.closed_by_reader or (self._fd is None and self._text is None):
                return
            try:
                self._write_fd(data.encode("utf-8")) if self._fd is not None else self._write_text(data)
            except BrokenPipeError:
                self.closed_by_reader = True
                log.warning("the reader of %s went away; no more events are written there", self.where)
            except OSError as exc:
                self._count_loss(exc)
            else:
                self.written += 1

    def _write_fd(self, data: bytes) -> None:
        """All of ``data``, or (in a regular file) nothing: a half-written line is cut off again."""
        if self._partial:
            data = b"\n" + data
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                try:
                    done += os.write(self._fd, view[done:])
                except BlockingIOError:  # a non-blocking descriptor whose reader is slow: wait for room
                    time.sleep(0.005)
        except OSError:
            if done and not _cut_back(self._fd, done):
                self._partial = True  # a pipe or device: the next event starts on a new line
            raise
        self._partial = False

    def _write_text(self, data: str) -> None:
        self._text.write(data)
        self._text.flush()

    def _count_loss(self, exc: OSError) -> None:
        self.lost += 1
        self.error = describe_error(exc)
        if self.lost == 1:
            log.error("cannot write events to %s (%s); the stream goes on and counts what is lost", self.where,
                      self.error)
            log.debug("traceback of that failure:", exc_info=True)

    def loss(self) -> SinkLoss | None:
        return SinkLoss(self.lost, self.where, self.error or "unknown error") if self.lost else None

    def close(self) -> None:
        with self._lock:
            if self._owned and self._fd is not None:
                os.close(self._fd)
                self._fd = None
            elif self._text is not None:
                with contextlib.suppress(ValueError, OSError):  # closed by the caller or the reader
                    self._text.flush()


def _open_for_append(path: Path) -> int:
    """A descriptor appending to ``path`` (folders created); an error the user can act on if that fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise EcmEdgeError(f"cannot open {path} to write events ({describe_error(exc)}); give a writable file "
                           "path, or - for stdout") from None


def _cut_back(fd: int, written: int) -> bool:
    """Remove the last ``written`` bytes of a regular file (a torn last line); False where that is impossible."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        os.ftruncate(fd, max(0, info.st_size - written))
    except OSError:
        return False
    return True


class CallbackSink(Sink):
    """Calls ``fn(event)``; an exception is logged in one line and the stream goes on."""

    def __init__(self, fn: Callable[[Event], Any], *, types: Iterable[str] | None = None):
        super().__init__(types)
        self.fn = fn
        self.failures = 0

    def write(self, event: Event) -> None:
        try:
            self.fn(event)
        except Exception:
            self.failures += 1
            log_failure(self.failures, f"event callback {getattr(self.fn, '__qualname__', repr(self.fn))} failed "
                                       f"on a {event.get('type')} event")


class Spool:
    """Undelivered events, oldest first: lines put back in front (memory), a JSONL file read from an offset,
    then a memory backlog. Used by the webhook and MQTT sinks (``owner`` names the sink in log lines).

    - :meth:`append` never raises: lines go to the end of the file; when the file cannot be written (disk full,
      file-size limit, a device such as ``/dev/full``) they wait in a backlog of at most ``memory_events``
      events, and beyond that the oldest are dropped and counted in :attr:`dropped`. The backlog goes to the file
      first as soon as it can be written, so the order stays oldest first.
    - :meth:`take` hands out waiting lines oldest first without removing them; :meth:`ack` removes the oldest
      handed-out lines once they are delivered, :meth:`release` hands them out again after a failed delivery.
      So a sink may keep several events in flight (MQTT) and still lose none when the link drops.
      :meth:`push_front` puts events that were in flight from memory back before everything else.
    - The file is read line by line from :attr:`offset` (never whole, and only a regular file: reading a device
      could be endless); a line that is not a JSON object is skipped and counted in :attr:`skipped`.
    - :meth:`resend` is the one-at-a-time form of take / ack / release (the webhook).
    - :meth:`close` drops the delivered part from the file (a streamed copy, with the lines put in front first),
      or removes the file once empty.

    Thread-safe; the file is never read and written at once.
    """

    def __init__(self, path: str | Path, memory_events: int = MEMORY_BACKLOG, owner: str = "webhook"):
        self.path = Path(path)
        self.memory_events = max(1, memory_events)
        self.owner = owner
        self.offset = 0  # bytes of the file already delivered (or skipped)
        self.written = 0  # events appended to the file
        self.dropped = 0  # events lost: neither in the file nor in memory
        self.skipped = 0  # spool lines that were not JSON events (damaged), left out of the re-send
        self.error: str | None = None  # why the file could not be written, last time
        self._front: collections.deque[bytes] = collections.deque()  # put back by push_front, oldest of all
        self._backlog: collections.deque[bytes] = collections.deque()
        self._taken: collections.deque[int] = collections.deque()  # per handed-out line: _FRONT, _BACKLOG or
        #                                                              the file offset just after it
        self._front_out = 0  # lines of _front handed out
        self._backlog_out = 0  # lines of _backlog handed out
        self._cursor = 0  # file offset after the lines handed out (and the damaged ones skipped)
        self._skipped_to = 0  # damaged lines before this offset are counted already
        self._read_error = False  # an unreadable spool was reported
        self._lock = threading.Lock()
        self._closed = False

    # -- writing --------------------------------------------------------------------------------------------
    def append(self, lines: Iterable[bytes]) -> None:
        """Add events (JSON lines) after everything already waiting."""
        lines = list(lines)
        if not lines:
            return
        with self._lock:
            if not self._flush_backlog():
                self._hold(lines)
                return
            try:
                self._append_file(b"".join(lines))
            except OSError as exc:
                self._file_failed(exc)
                self._hold(lines)
            else:
                self.written += len(lines)

    def push_front(self, lines: Iterable[bytes]) -> None:
        """Put events back before everything waiting (events that were in flight from memory when the link
        dropped; a sink's in-flight window bounds them). Kept in memory, written to the file's front at close."""
        with self._lock:
            self._front.extendleft(reversed(list(lines)))

    def _flush_backlog(self) -> bool:
        """Move the memory backlog to the file; True when the backlog is empty afterwards."""
        if not self._backlog:
            return True
        end = self._file_size()
        try:
            self._append_file(b"".join(self._backlog))
        except OSError as exc:
            self._file_failed(exc)
            return False
        self._backlog_moved(end)
        moved = len(self._backlog)
        self.written += moved
        self._backlog.clear()
        log.warning("%s spool %s can be written again; %d events moved there from memory", self.owner,
                    self.path, moved)
        return True

    def _backlog_moved(self, end: int) -> None:
        """Handed-out backlog lines now sit in the file from offset ``end``: track them as file lines."""
        if not self._backlog_out:
            return
        position = end
        entries = list(self._taken)
        first = len(entries) - self._backlog_out  # backlog lines are always the last ones handed out
        for i in range(first, len(entries)):
            position += len(self._backlog[i - first])
            entries[i] = position
        self._taken = collections.deque(entries)
        self._cursor, self._backlog_out = position, 0

    def _file_size(self) -> int:
        try:
            info = self.path.stat()
        except OSError:
            return 0
        return info.st_size if stat.S_ISREG(info.st_mode) else 0

    def _append_file(self, data: bytes) -> None:
        """Append all of ``data`` or nothing: a partly written tail is cut off again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            size = os.fstat(fd).st_size if regular else 0
            try:
                view, done = memoryview(data), 0
                while done < len(data):
                    done += os.write(fd, view[done:])
            except OSError:
                if regular:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _file_failed(self, exc: OSError) -> None:
        first = self.error is None
        self.error = describe_error(exc)
        if first:
            log.error("%s spool %s cannot be written (%s); undelivered events wait in memory (at most %d, "
                      "then the oldest are dropped and counted)", self.owner, self.path, self.error,
                      self.memory_events)
            log.debug("traceback of that failure:", exc_info=True)

    def _hold(self, lines: list[bytes]) -> None:
        self._backlog.extend(lines)
        excess = min(len(self._backlog) - self.memory_events, len(self._backlog) - self._backlog_out)
        for _ in range(max(0, excess)):  # the oldest not in flight (a sink's window bounds those)
            del self._backlog[self._backlog_out]
        if excess > 0:
            if self.dropped == 0:
                log.error("%s spool %s full and %d events held in memory: dropping the oldest (counted)",
                          self.owner, self.path, self.memory_events)
            self.dropped += excess

    # -- reading --------------------------------------------------------------------------------------------
    def _is_file(self) -> bool:
        try:
            return stat.S_ISREG(self.path.stat().st_mode)
        except OSError:
            return False

    def pending(self) -> bool:
        """Whether any event waits (handed out but not yet acknowledged ones included)."""
        with self._lock:
            return bool(self._front or self._backlog) or self._file_pending(self.offset)

    def _file_pending(self, position: int) -> bool:
        try:
            info = self.path.stat()
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size > position

    def take(self, count: int) -> list[bytes]:
        """Up to ``count`` waiting events after those already handed out, oldest first, not yet removed."""
        with self._lock:
            lines: list[bytes] = []
            while len(lines) < count and not self._closed:
                line = self._next_line()
                if line is None:
                    break
                lines.append(line)
            return lines

    def _next_line(self) -> bytes | None:
        """Hand out the next waiting line (front, file, backlog) and remember where it came from."""
        if self._front_out < len(self._front):
            self._front_out += 1
            self._taken.append(_FRONT)
            return self._front[self._front_out - 1]
        line = self._next_file_line()
        if line is not None:
            self._taken.append(self._cursor)
            return line
        if self._read_error and self._file_pending(self._cursor):
            return None  # the unreadable file holds older events: nothing newer goes out before them
        if self._backlog_out < len(self._backlog):
            self._backlog_out += 1
            self._taken.append(_BACKLOG)
            return self._backlog[self._backlog_out - 1]
        return None

    def _next_file_line(self) -> bytes | None:
        """The next JSON line of the file after the cursor (damaged lines skipped), or None."""
        self._cursor = max(self._cursor, self.offset)
        while self._file_pending(self._cursor):
            try:
                raw = self._read_line(self._cursor)
            except OSError as exc:  # unreadable (permissions, I/O error): reported, tried again later
                self._read_failed(exc)
                return None
            self._read_error = False
            line = raw.strip()
            start, self._cursor = self._cursor, self._cursor + (len(raw) or 1)
            if line and len(raw) <= SPOOL_LINE_MAX and _is_json_object(line):
                return line + b"\n"
            if line and start >= self._skipped_to:
                self.skipped += 1
                log.warning("%s spool %s: skipped a damaged line at byte %d (not a JSON event)", self.owner,
                            self.path, start)
            self._skipped_to = max(self._skipped_to, self._cursor)
        if not self._taken:
            self.offset = self._cursor  # only damaged lines were left: they count as done
        return None

    def _read_line(self, position: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(position)
            return f.readline(SPOOL_LINE_MAX + 1)

    def _read_failed(self, exc: OSError) -> None:
        if not self._read_error:
            self._read_error = True
            log.error("%s spool %s cannot be read (%s); its events are not re-sent until it can be", self.owner,
                      self.path, describe_error(exc))

    def ack(self, count: int) -> None:
        """The oldest ``count`` handed-out events were delivered: remove them."""
        with self._lock:
            for _ in range(min(count, len(self._taken))):
                where = self._taken.popleft()
                if where == _FRONT:
                    self._front.popleft()
                    self._front_out -= 1
                elif where == _BACKLOG:
                    self._backlog.popleft()
                    self._backlog_out -= 1
                else:
                    self.offset = where
            if not self._taken:
                self.offset = max(self.offset, self._cursor)  # damaged lines skipped after the last one

    def release(self) -> None:
        """The handed-out events that were not acknowledged are handed out again, in the same order."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        self._taken.clear()
        self._front_out = self._backlog_out = 0
        self._cursor = self.offset

    def resend(self, post: Callable[[bytes], bool]) -> tuple[int, bool]:
        """Hand waiting events to ``post`` oldest first until it returns False: (events sent, nothing left)."""
        sent = 0
        while not self._closed:
            lines = self.take(1)
            if not lines:
                return sent, self._drained()
            if not post(lines[0]):
                self.release()
                return sent, False
            if self._closed:
                break
            self.ack(1)
            sent += 1
        return sent, False

    def _drained(self) -> bool:
        """Nothing waits any more: the file is removed and reading starts over (True), else False."""
        with self._lock:
            if self._front or self._backlog or self._file_pending(self.offset):
                return False
            if self._is_file():  # all of it delivered (or an empty leftover)
                with contextlib.suppress(OSError):
                    self.path.unlink()
            self.offset = self._cursor = self._skipped_to = 0
            return True

    def count(self) -> int:
        """Events waiting: the lines put in front, lines in the file beyond the offset (counted in chunks) and
        the memory backlog."""
        with self._lock:
            return len(self._front) + self._count_file() + len(self._backlog)

    def _count_file(self) -> int:
        if not self._file_pending(self.offset):
            return 0
        lines, last = 0, b"\n"
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while chunk := f.read(_COPY_CHUNK):
                    lines += chunk.count(b"\n")
                    last = chunk[-1:]
        except OSError:
            return lines
        return lines + (last != b"\n")

    # -- closing --------------------------------------------------------------------------------------------
    def close(self) -> int:
        """Keep only what waits, in order: front lines, the file's undelivered part, the backlog. Returns the
        events lost now (those that could be kept neither in the file nor anywhere else)."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._release()
            lost = 0
            if not self._flush_backlog():
                lost = len(self._backlog)
                self._backlog.clear()
            if self._front or (self.offset and self._is_file()):
                lost += self._compact()
            self.dropped += lost
            return lost

    def _compact(self) -> int:
        """Rewrite the file as the front lines plus its undelivered part (a streamed copy renamed over it);
        returns the front lines lost when that is impossible."""
        front = b"".join(self._front)
        try:
            if not self._is_file():
                if front:
                    self._append_file(front)  # nothing to keep order with (no file, or a device)
            elif not front and self.path.stat().st_size <= self.offset:
                self.path.unlink()
            else:
                with atomic_path(self.path) as tmp, open(self.path, "rb") as src, open(tmp, "wb") as dst:
                    dst.write(front)
                    src.seek(self.offset)
                    while chunk := src.read(_COPY_CHUNK):
                        dst.write(chunk)
            self.written += len(self._front)
            self._front.clear()
            self.offset = 0
            return 0
        except OSError as exc:  # no room for the copy: the delivered events are sent again next time
            lost = len(self._front)
            self._front.clear()
            self.error = describe_error(exc)
            log.warning("%s spool %s: could not rewrite it without the %d delivered bytes (%s); they are sent "
                        "again on the next run (each event keeps its id, so receivers can drop repeats)%s",
                        self.owner, self.path, self.offset, self.error,
                        f", and {lost} events that were in flight are lost" if lost else "")
            return lost


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def event_id(line: bytes) -> str:
    """The ``id`` of an event line; for a line without one (a spool of an older version), a hash of the line,
    so its re-sends still share one key."""
    with contextlib.suppress(ValueError, AttributeError):
        value = json.loads(line).get(ID_KEY)
        if isinstance(value, str) and value:
            return value
    return "sha256-" + hashlib.sha256(line.strip()).hexdigest()[:32]


class SpoolingSink(Sink):
    """Base of the sinks that deliver events over the network from a writer thread and keep what they cannot
    deliver in a :class:`Spool`: :class:`WebhookSink` and ``ecm_edge.runtime.mqtt.MqttSink``.

    What they share is here: the caller's side (:meth:`write` only queues, in a bounded queue; a full queue, or
    a closing sink, sends the event to the spool), the spool and its counters, the close deadline that
    :meth:`hurry` brings forward, the exponential backoff after a failed delivery, and what is reported at close
    (events kept for the next run, events lost). A subclass names itself (:attr:`kind`) and its receiver
    (:attr:`where`), runs the writer thread and closes it.
    """

    wire = True
    kind = "spooling"  # names the sink in log lines (and its spool's): "webhook", "MQTT"
    where: str  # the receiver, as log lines and losses name it

    def __init__(self, spool: str | Path, *, backoff_s: float, backoff_max_s: float, queue_size: int,
                 close_timeout_s: float, memory_events: int, types: Iterable[str] | None):
        super().__init__(types)
        self.spool = Path(spool)
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.close_timeout_s = close_timeout_s  # delivery time granted at close before the rest is spooled
        self.delivered = 0  # events the receiver acknowledged (spooled ones included once re-sent)
        self._spool = Spool(self.spool, memory_events, owner=self.kind)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._closing = threading.Event()  # no new events: later writes go straight to the spool
        self._deadline = math.inf  # monotonic time by which close must be done (hurry() brings it forward)
        self._queue_full_warned = False
        self._delay = backoff_s  # the wait after the next failure; doubles per failure up to backoff_max_s
        self._next_try = 0.0  # monotonic time before which a receiver that is down is not tried again

    @property
    def spooled(self) -> int:
        """Events written to the spool file by this sink."""
        return self._spool.written

    @property
    def dropped(self) -> int:
        """Events lost: neither delivered nor spooled (the spool unwritable and the memory backlog full)."""
        return self._spool.dropped

    def spool_size(self) -> int:
        """Events waiting in the spool (file and memory)."""
        return self._spool.count()

    def write(self, event: Event) -> None:
        """Queue one event for delivery (never waits for the receiver: a full queue sends it to the spool)."""
        line = to_json_line(with_id(event)).encode("utf-8")
        if self._closing.is_set():
            self._spool.append([line])
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            if not self._queue_full_warned:
                self._queue_full_warned = True
                log.warning("%s queue full (%d events); spooling to %s", self.kind, self._queue.maxsize,
                            self.spool)
            self._spill(line)

    def _spill(self, line: bytes) -> None:
        """The queue is full: ``line`` goes to the spool."""
        self._spool.append([line])

    def hurry(self, grace_s: float) -> None:
        self._deadline = min(self._deadline, time.monotonic() + grace_s)

    def _back_off(self) -> None:
        """A delivery failed: the receiver is not tried again before the current delay has passed, and the delay
        doubles."""
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.backoff_max_s)

    def _report(self) -> None:
        """At close: say how many events wait in the spool for the next run."""
        waiting = self._spool.count()
        if waiting:
            log.warning("%s %s: %d undelivered events kept in %s; they are sent first on the next run",
                        self.kind, self.where, waiting, self.spool)

    def loss(self) -> SinkLoss | None:
        if not self._spool.dropped:
            return None
        return SinkLoss(self._spool.dropped, f"{self.where} nor spooled to {self.spool}",
                        self._spool.error or "unknown error", verb="neither delivered to")


class WebhookSink(SpoolingSink):
    """HTTP POST per event from a writer thread, with retries, a bounded queue and a :class:`Spool`."""

    kind = "webhook"

    def __init__(self, url: str, spool: str | Path, *, timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0, queue_size: int = 1000,
                 close_timeout_s: float = 10.0, memory_events: int = MEMORY_BACKLOG,
                 types: Iterable[str] | None = None):
        super().__init__(spool, backoff_s=backoff_s, backoff_max_s=backoff_max_s, queue_size=queue_size,
                         close_timeout_s=close_timeout_s, memory_events=memory_events, types=types)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.timeout_s, self.retries = timeout_s, max(1, retries)
        self._abort = threading.Event()  # close ran out of time: spool what is left without trying
        self._handover = threading.Lock()  # who spools the event in flight: the writer, or close() if stuck
        self._in_flight: bytes | None = None
        self._abandoned = False  # close() gave up on the writer thread and took over its event
        self._thread = threading.Thread(target=self._run, name="ecm-edge-webhook", daemon=True)
        self._thread.start()

    @property
    def where(self) -> str:
        return self.url

    # -- the caller's side ------------------------------------------------------------------------------------
    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what is queued within ``timeout_s`` (default ``close_timeout_s``), spool the rest, stop."""
        if self._closing.is_set():
            return
        self.hurry(self.close_timeout_s if timeout_s is None else timeout_s)
        self._closing.set()
        with contextlib.suppress(queue.Full):  # a full queue: the writer stops once it has emptied it
            self._queue.put_nowait(_STOP)
        while self._thread.is_alive() and time.monotonic() < self._deadline:
            self._thread.join(_CLOSING_POLL_S)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(_ABORT_GRACE_S)
        self._take_over()
        self._spool.append(self._leftovers())  # written while the writer stopped
        self._spool.close()
        self._report()

    def _take_over(self) -> None:
        """A writer stuck in a POST past the deadline: spool its event here (a later success of that POST makes
        a duplicate, with the same id)."""
        with self._handover:
            if not self._thread.is_alive():
                return
            self._abandoned = True
            if self._in_flight is not None:
                self._spool.append([self._in_flight])
                self._in_flight = None

    # -- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._abandoned:
            try:
                if not self._step():
                    return
            except Exception:  # a bug or an unreadable spool: say so, and go on (dying would strand the queue)
                failures += 1
                log_failure(failures, f"webhook {self.url}: the writer thread failed")

    def _step(self) -> bool:
        """Take one event (or an idle moment to re-send the spool); False once the writer should stop."""
        try:
            item = self._queue.get(timeout=self._idle_wait())
        except queue.Empty:
            if self._closing.is_set() and self._queue.empty():
                self._last_resend()
                return False
            self._resend_spool()
            return True
        if item is _STOP:
            self._last_resend()
            return False
        try:
            self._deliver(item)
        except Exception:
            self._spool.append([item])  # whatever went wrong, the event is kept
            raise
        return True

    def _idle_wait(self) -> float | None:
        if self._closing.is_set():
            return _CLOSING_POLL_S
        if not self._spool.pending():
            return None
        return max(0.01, self._next_try - time.monotonic())

    def _deliver(self, line: bytes) -> None:
        if self._abort.is_set() or not self._resend_spool():
            self._spool.append([line])  # keep the order: older spooled events go out first
            return
        with self._handover:
            self._in_flight = line
        delivered = self._post_with_retries(line, self.retries)
        with self._handover:
            if self._abandoned:  # close() took the event over
                return
            self._in_flight = None
        if delivered:
            self.delivered += 1
        else:
            self._spool.append([line])
            self._back_off()

    def _post_with_retries(self, line: bytes, attempts: int) -> bool:
        delay = self.backoff_s
        error = None
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
        """Re-send spooled events oldest first; True when nothing waits afterwards."""
        if not self._spool.pending():
            return True
        if self._abort.is_set() or time.monotonic() < self._next_try:
            return False
        sent, empty = self._spool.resend(self._post_once)
        self.delivered += sent
        if not empty:
            self._back_off()
            return False
        if sent:
            log.info("webhook %s is back: re-sent %d spooled events", self.url, sent)
        self._delay = self.backoff_s
        return True

    def _last_resend(self) -> None:
        """Closing: one more try for the spooled events, without waiting for the next probe (a receiver that
        failed a moment ago may be back; one that is down costs one refused connection)."""
        self._next_try = 0.0
        self._resend_spool()

    def _post_once(self, line: bytes) -> bool:
        return not self._abort.is_set() and not self._abandoned and self._post(line) is None

    def _post(self, line: bytes) -> str | None:
        """POST one event; None on a 2xx answer, else what went wrong."""
        request = urllib.request.Request(self.url, data=line.rstrip(b"\n"), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Idempotency-Key": event_id(line)})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return str(getattr(exc, "reason", exc))
        except (http.client.HTTPException, ValueError) as exc:  # a garbled answer, an unusable URL
            return describe_error(exc)

    def _leftovers(self) -> list[bytes]:
        lines = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return lines
            if item is not _STOP:
                lines.append(item)


class EventDispatcher:
    """The writer thread: drains a bounded event queue into every sink, isolating and counting sink failures."""

    def __init__(self, sinks: Iterable[Sink] = (), queue_size: int = 1024):
        self._sinks: list[Sink] = list(sinks)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failures: dict[int, tuple[int, str]] = {}  # id(sink) -> (failed writes, last reason)

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

    def hurry(self, grace_s: float) -> None:
        """A stop was requested: every sink must close within about ``grace_s``."""
        for sink in self._sinks:
            sink.hurry(grace_s)

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
                log.error("closing the %s failed (%s)", _describe_sink(sink), describe_error(sys.exc_info()[1]))
                log.debug("traceback of that failure:", exc_info=True)

    def losses(self) -> list[SinkLoss]:
        """What each sink could not write: its own count, or the writes that raised here."""
        found = []
        for sink in self._sinks:
            own = sink.loss()
            if own is not None:
                found.append(own)
            if id(sink) in self._failures:
                count, reason = self._failures[id(sink)]
                found.append(SinkLoss(count, _describe_sink(sink), reason))
        return found

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
                self._hand_over(event)
            finally:
                self._queue.task_done()

    def _hand_over(self, event: Event) -> None:
        """Give one event to every sink that takes its type; wire sinks get it with its id (the same one for all
        of them)."""
        stamped: Event | None = None
        for sink in self._sinks:
            if not sink.accepts(event):
                continue
            if sink.wire and stamped is None:
                stamped = with_id(event)
            try:
                sink.write(stamped if sink.wire else event)
            except Exception as exc:
                count = self._failures.get(id(sink), (0, ""))[0] + 1
                self._failures[id(sink)] = (count, describe_error(exc))
                log_failure(count, f"{_describe_sink(sink)} failed on a {event.get('type')} event")


def _describe_sink(sink: Sink) -> str:
    where = getattr(sink, "where", None) or getattr(sink, "url", None)
    return f"{type(sink).__name__} {where}" if where else type(sink).__name__


class EventHub:
    """The event side of a stream front end (the engine, the Triton client): sinks, callbacks and outside events,
    all through one :class:`EventDispatcher` (``self.dispatcher``)."""

    dispatcher: EventDispatcher

    def on_event(self, callback: Callable[[Event], Any]) -> Callable[[Event], Any]:
        """Call ``callback(event)`` for every event (from the writer thread); usable as a decorator."""
        self.dispatcher.add(CallbackSink(callback))
        return callback

    def add_sink(self, sink: Sink) -> Sink:
        return self.dispatcher.add(sink)

    def emit(self, event: Event) -> None:
        """Publish an event from outside the pipeline (a source's ``source_lost`` / ``source_restored``)."""
        self.dispatcher.publish([event])
