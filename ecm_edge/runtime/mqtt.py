"""Events to an MQTT broker, in the conventions of surveillance software (Frigate, Home Assistant).

``MqttSink("mqtt://user:password@broker:1883/cameras", "mqtt-spool.jsonl")`` publishes every event as the JSON
line the JSONL sink writes (with its ``id``) to ``<prefix>/<source>/<event type>`` (an event without a source:
``<prefix>/<event type>``), QoS 1, not retained. ``<prefix>/availability`` says ``online`` (retained) while the
sink is connected and ``offline`` (retained) after it closed, or, as the broker's last will, after its process
died or lost the link. ``mqtts://`` is MQTT over TLS (port 8883 unless given).

Nothing is lost and the pipeline never waits: ``write`` only queues (a bounded queue; when it is full the event
goes to the spool file); a writer thread publishes, keeps at most :data:`IN_FLIGHT_MAX` events waiting for
their PUBACK, and counts an event delivered only once the broker acknowledged it. While the broker is away
(down at start, or gone mid-stream) events go to a :class:`~ecm_edge.runtime.sinks.Spool` and are re-sent in
order once it is back, unacknowledged ones first; the writer reconnects with exponential backoff, each time with
a fresh client, so nothing is re-sent behind its back. A spool left by an earlier run is sent first.

At start: a broker that refuses the login (bad user name or password, not authorized, client id rejected) is an
:class:`~ecm_edge.errors.EcmEdgeError` naming the broker and what to check, not an endless retry; a broker that
cannot be reached starts the sink anyway, spooling, with a warning (a camera pipeline must not die because the
broker is down).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import queue
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ecm_edge.errors import ConfigError, EcmEdgeError
from ecm_edge.runtime.events import SOURCE_KEY, Event
from ecm_edge.runtime.sinks import (
    MEMORY_BACKLOG,
    SpoolingSink,
    describe_error,
    log_failure,
    parse_event_types,
)

log = logging.getLogger("ecm_edge")

SCHEMES = {"mqtt": False, "mqtts": True}  # URL scheme -> TLS
PORT = 1883  # IANA port of MQTT
TLS_PORT = 8883  # IANA port of MQTT over TLS
DEFAULT_PREFIX = "ecm-edge"  # first topic level when the URL has no path
DEFAULT_SPOOL = "mqtt-spool.jsonl"  # apart from the webhook's spool: two sinks never share one
AVAILABILITY = "availability"  # topic level of the online/offline state
ONLINE, OFFLINE = "online", "offline"  # Home Assistant's default payloads for availability
QOS = 1  # at least once: the broker acknowledges every event (PUBACK); receivers drop repeats by `id`
IN_FLIGHT_MAX = 64  # events published and not yet acknowledged: keeps a slow link busy, bounds what is re-sent
KEEPALIVE_S = 60  # MQTT keepalive; a broker that vanished silently is noticed after 1.5 times this
CONNECT_TIMEOUT_S = 5.0  # TCP/TLS connect and CONNACK wait, each; bounds how long a start can wait
OFFLINE_WAIT_S = 1.0  # at close: how long the `offline` message may wait for its PUBACK (else the will says it)
_IDLE_WAIT_S = 1.0  # the writer looks at its state at least this often, woken or not
_STOP_GRACE_S = 1.0  # after close stopped waiting: how long the writer gets to hand over what it holds
_FATAL_CONNACK = {  # CONNACK refusals that retrying cannot fix, and what to check
    "Bad user name or password": "check the user name and password (mqtt://USER:PASSWORD@host/... or the "
                                 "username/password options)",
    "Not authorized": "check the user name and password (mqtt://USER:PASSWORD@host/... or the username/password "
                      "options) and the broker's access rules for this client",
    "Client identifier not valid": "choose another client id (the broker rejected {client_id!r})",
    "Unsupported protocol version": "use a broker that speaks MQTT 3.1.1",
}


@dataclass(frozen=True)
class MqttTarget:
    """Where events go: the broker, TLS or not, the topic prefix and the login (from the URL)."""

    host: str
    port: int
    tls: bool
    prefix: str
    username: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:
        """The broker as a URL without the login, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}/{self.prefix}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://[user:password@]host[:1883]/prefix`` (``mqtts://``: TLS, port 8883) as a :class:`MqttTarget`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r} (e.g. "
                          "mqtt://user:password@broker:1883/cameras)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"MQTT URL {url!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigError(f"MQTT URL {url!r} names no broker host (e.g. mqtt://broker:1883/cameras)")
    if parts.query or parts.fragment:
        raise ConfigError(f"MQTT URL {url!r}: give options as options, not after ? or # in the URL")
    tls = SCHEMES[parts.scheme]
    unquote = urllib.parse.unquote
    return MqttTarget(parts.hostname, port or (TLS_PORT if tls else PORT), tls, topic_prefix(unquote(parts.path)),
                      unquote(parts.username) if parts.username is not None else None,
                      unquote(parts.password) if parts.password is not None else None)


def topic_prefix(path: str) -> str:
    """The topic prefix from a URL path: levels kept, no wildcards, not a ``$`` (broker) topic."""
    prefix = path.strip("/") or DEFAULT_PREFIX
    levels = prefix.split("/")
    if any(not level or "+" in level or "#" in level or "\0" in level for level in levels) or prefix[0] == "$":
        raise ConfigError(f"MQTT topic prefix {prefix!r} is not usable: levels must be non-empty, without + or # "
                          "(wildcards) and not start with $ (the broker's topics)")
    return prefix


def topic_level(text: str) -> str:
    """``text`` as one topic level: ``+`` and ``#`` (wildcards), ``/`` (level separator) and NUL become ``_``."""
    return "".join("_" if c in "+#/\0" else c for c in text) or "_"


def event_topic(prefix: str, event: Event) -> str:
    """``<prefix>/<source>/<event type>``, or ``<prefix>/<event type>`` for an event without a source."""
    kind = topic_level(str(event.get("type") or "event"))
    source = event.get(SOURCE_KEY)
    return f"{prefix}/{kind}" if source is None else f"{prefix}/{topic_level(str(source))}/{kind}"


def default_client_id() -> str:
    """``ecm-edge-<hostname>-<pid>``: unique per process, so two pipelines never take over each other's session."""
    return f"ecm-edge-{socket.gethostname()}-{os.getpid()}"


def tls_context(ca_file: str | Path | None = None, cert_file: str | Path | None = None,
                key_file: str | Path | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context: the system's CAs or ``ca_file``, a client certificate if given; ``insecure`` checks
    neither the certificate nor the host name (a test broker with a self-signed certificate)."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MQTT TLS files unusable ({describe_error(exc)}): give a readable PEM CA file and, for "
                          "a client certificate, its certificate and key files") from None
    if key_file and not cert_file:
        raise ConfigError("MQTT TLS: a client key file needs its certificate file too")
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class _Settings:
    """What every connection of a sink shares."""

    target: MqttTarget
    client_id: str
    keepalive_s: int
    tls: ssl.SSLContext | None
    insecure: bool

    @property
    def availability(self) -> str:
        return f"{self.target.prefix}/{AVAILABILITY}"


class _Refused(Exception):
    """The broker answered CONNACK with a refusal (``reason``: paho's words for it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Connection:
    """One connection to the broker through a fresh paho client (its network thread, no automatic reconnect):
    whatever paho still holds when the link drops dies with it, and the sink re-sends from its own window."""

    def __init__(self, settings: _Settings, wake: threading.Event):
        self._settings = settings
        self._wake = wake
        self._answered = threading.Event()  # CONNACK came, or the link dropped before it
        self.refused: str | None = None
        self.lost = threading.Event()
        self.reason = "connection closed"
        self.client = self._client()

    def _client(self) -> paho.Client:
        settings = self._settings
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=True,
                             protocol=paho.MQTTv311, reconnect_on_failure=False)
        if settings.target.username is not None:
            client.username_pw_set(settings.target.username, settings.target.password)
        if settings.tls is not None:
            client.tls_set_context(settings.tls)
            client.tls_insecure_set(settings.insecure)
        client.will_set(settings.availability, OFFLINE, qos=QOS, retain=True)
        client.max_inflight_messages_set(IN_FLIGHT_MAX)  # the sink's window: paho never queues behind it
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = lambda *_: self._wake.set()
        return client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        self._answered.set()
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.reason = "connection lost" if reason.is_failure else "connection closed"
        self.lost.set()
        self._answered.set()
        self._wake.set()

    def open(self, timeout_s: float) -> None:
        """Connect, wait for CONNACK and say ``online``. Raises OSError (unreachable, TLS), :class:`_Refused`
        (CONNACK said no) or TimeoutError (no answer in time)."""
        target = self._settings.target
        self.client.connect_timeout = timeout_s
        self.client.connect(target.host, target.port, self._settings.keepalive_s)
        self.client.loop_start()
        answered = self._answered.wait(timeout_s)
        if self.refused or not answered or self.lost.is_set():
            self.close(offline=False)
            if self.refused:
                raise _Refused(self.refused)
            raise TimeoutError("no answer to CONNECT") if not answered else ConnectionError(self.reason)
        self.client.publish(self._settings.availability, ONLINE, qos=QOS, retain=True)

    def publish(self, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=QOS, retain=False)

    def close(self, offline: bool, wait_s: float = 0.0) -> None:
        """End the connection: with ``offline`` acknowledged and a clean DISCONNECT (the broker drops the will),
        else by cutting the link (the broker publishes the will, ``offline``)."""
        clean = False
        if offline and not self.lost.is_set():
            info = self.client.publish(self._settings.availability, OFFLINE, qos=QOS, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not connected any more
                info.wait_for_publish(max(0.0, wait_s))
            clean = info.is_published()
        if clean:
            self.client.disconnect()
        else:
            sock = self.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the network thread, which then ends
        self.client.loop_stop()


class MqttSink(SpoolingSink):
    """Publishes events to an MQTT broker from a writer thread; a :class:`Spool` keeps what cannot be delivered.

    ``url``: ``mqtt://[user:password@]host[:1883]/prefix`` or ``mqtts://...`` (TLS, port 8883); ``username`` /
    ``password`` override the URL's. ``ca_file`` / ``cert_file`` / ``key_file`` / ``insecure``: TLS (system CAs
    by default). ``client_id`` defaults to ``ecm-edge-<hostname>-<pid>``. ``types``: the event types it
    receives (None: all).

    A broker that cannot be reached at start does not stop the caller: the sink starts, logs a warning and
    spools until the broker answers. A broker that refuses the login raises :class:`EcmEdgeError` here.
    ``close`` delivers what it can within ``close_timeout_s`` (or the grace given by :meth:`hurry`) and keeps
    the rest in the spool for the next run.
    """

    kind = "MQTT"

    def __init__(self, url: str, spool: str | Path = DEFAULT_SPOOL, *, username: str | None = None,
                 password: str | None = None, ca_file: str | Path | None = None, cert_file: str | Path | None = None,
                 key_file: str | Path | None = None, insecure: bool = False, client_id: str | None = None,
                 keepalive_s: int = KEEPALIVE_S, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0, queue_size: int = 1000,
                 close_timeout_s: float = 10.0, memory_events: int = MEMORY_BACKLOG,
                 types: Iterable[str] | None = None):
        super().__init__(spool, backoff_s=backoff_s, backoff_max_s=backoff_max_s, queue_size=queue_size,
                         close_timeout_s=close_timeout_s, memory_events=memory_events, types=types)
        target = parse_mqtt_url(url)
        if username is not None or password is not None:
            target = MqttTarget(target.host, target.port, target.tls, target.prefix,
                                username if username is not None else target.username,
                                password if password is not None else target.password)
        context = tls_context(ca_file, cert_file, key_file, insecure) if target.tls else None
        if not target.tls and (ca_file or cert_file or key_file or insecure):
            raise ConfigError(f"MQTT TLS options given for {target.where}: use an mqtts:// URL for TLS")
        self.target, self.where = target, target.where
        self._settings = _Settings(target, client_id or default_client_id(), keepalive_s, context, insecure)
        self.connect_timeout_s = connect_timeout_s
        self._order = threading.Lock()  # the queue's content moves to the spool in one piece (order kept)
        self._wake = threading.Event()  # something changed: an event queued, a PUBACK, a link up or down
        self._window: collections.deque[tuple[bytes, paho.MQTTMessageInfo, bool]] = collections.deque()
        self._conn: _Connection | None = None
        self._tried_closing = False  # a closing sink tries to connect once more, then stops
        self._refusals = 0  # refused reconnections in a row (logged sparingly)
        self._connect_at_start()
        self._thread = threading.Thread(target=self._run, name="ecm-edge-mqtt", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.lost.is_set()

    # -- the caller's side ------------------------------------------------------------------------------------
    def write(self, event: Event) -> None:
        """Queue one event (or spool it, :meth:`SpoolingSink.write`) and wake the writer."""
        super().write(event)
        self._wake.set()

    def _spill(self, line: bytes) -> None:
        """The queue is full: it goes to the spool, then ``line`` (older events stay before newer ones)."""
        with self._order:
            self._spool.append([*self._drain_queue(), line])

    def hurry(self, grace_s: float) -> None:
        super().hurry(grace_s)
        self._wake.set()

    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what waits within ``timeout_s`` (default ``close_timeout_s``), spool the rest, say offline."""
        if self._closing.is_set():
            return
        self.hurry(self.close_timeout_s if timeout_s is None else timeout_s)
        self._next_try = 0.0  # a broker that was down may be back: one more try
        self._closing.set()
        self._wake.set()
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + self.connect_timeout_s + _STOP_GRACE_S)
        if self._thread.is_alive():
            log.error("MQTT %s: the writer did not stop in time; what it holds is lost", self.where)
        with self._order:
            self._spool.append(self._drain_queue())  # written while the writer stopped
        self._spool.close()
        self._report()

    # -- connecting -----------------------------------------------------------------------------------------
    def _connect_at_start(self) -> None:
        """The first connection: a refused login is an error now; an unreachable broker only a warning."""
        try:
            self._conn = self._open()
        except _Refused as exc:
            if exc.reason in _FATAL_CONNACK:
                raise EcmEdgeError(self._refusal(exc.reason)) from None
            self._went_down(f"{self._refusal(exc.reason)}; starting anyway: events are kept in {self.spool} and "
                            "sent once it accepts")
        except (OSError, TimeoutError, ConnectionError) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise EcmEdgeError(f"MQTT broker {self.where}: its TLS certificate is not trusted "
                                   f"({exc.verify_message}); give the CA that signed it (ca_file), or insecure "
                                   "for a test broker") from None
            self._went_down(f"MQTT broker {self.where} cannot be reached ({describe_error(exc)}); starting anyway: "
                            f"events are kept in {self.spool} and sent once it answers")

    def _open(self) -> _Connection:
        conn = _Connection(self._settings, self._wake)
        timeout_s = self.connect_timeout_s
        if self._closing.is_set():
            timeout_s = max(0.1, min(timeout_s, self._deadline - time.monotonic()))
        conn.open(timeout_s)
        return conn

    def _refusal(self, reason: str) -> str:
        check = _FATAL_CONNACK.get(reason, "check the broker's log").format(client_id=self._settings.client_id)
        user = self.target.username
        return (f"MQTT broker {self.where} refused the connection ({reason}) for "
                f"{'user ' + repr(user) if user else 'an anonymous client'}: {check}")

    def _reconnect(self) -> None:
        try:
            self._conn = self._open()
        except _Refused as exc:
            self._refusals += 1
            if math.log10(self._refusals).is_integer():  # the 1st, 10th, 100th ...: no flood while it lasts
                log.error("%s; events are kept in %s, retrying (%d refusals so far)", self._refusal(exc.reason),
                          self.spool, self._refusals)
            self._went_down()
            return
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.debug("MQTT broker %s: connection attempt failed (%s)", self.where, describe_error(exc))
            self._went_down()
            return
        self._delay, self._refusals = self.backoff_s, 0
        log.info("MQTT broker %s is connected again; %d spooled events go first", self.where, self.spool_size())

    def _went_down(self, message: str | None = None) -> None:
        """No connection: say so (once per outage), try again after the backoff."""
        if message:
            log.warning(message)
        self._back_off()

    def _lost(self) -> None:
        """The link dropped: what was in flight goes back before everything waiting, in order."""
        conn, self._conn = self._conn, None
        self._settle()
        unacknowledged = list(self._window)
        self._window.clear()
        self._spool.release()
        self._spool.push_front(line for line, _, from_spool in unacknowledged if not from_spool)
        conn.close(offline=False)
        self._went_down(f"MQTT broker {self.where} went away ({conn.reason}); events are kept in {self.spool} "
                        "and sent in order once it is back")

    # -- the writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    if not self._cycle():
                        return
                except Exception:  # a bug: say so, and go on (dying would strand the queue)
                    failures += 1
                    log_failure(failures, f"MQTT {self.where}: the writer thread failed")
                    self._wake.wait(self.backoff_s)
        finally:
            self._finish()

    def _cycle(self) -> bool:
        """Look at the link, the acknowledgements and the queue once; False once the writer should stop."""
        self._wake.clear()
        if self._conn is not None and self._conn.lost.is_set():
            self._lost()
        if self._conn is None and time.monotonic() >= self._next_try and self._may_try():
            self._reconnect()
        self._settle()
        with self._order:
            if self._conn is None or self._spool.pending():
                self._spool.append(self._drain_queue())  # behind what already waits
            if self._conn is not None:
                self._fill()
        if self._closing.is_set() and self._should_stop():
            return False
        self._wake.wait(self._wait_s())
        return True

    def _may_try(self) -> bool:
        if not self._closing.is_set():
            return True
        if self._tried_closing or time.monotonic() >= self._deadline:
            return False
        self._tried_closing = True
        return True

    def _should_stop(self) -> bool:
        if time.monotonic() >= self._deadline:
            return True
        if self._conn is None:
            return self._tried_closing or not self._may_try()
        return not self._window and self._queue.empty() and not self._spool.pending()

    def _wait_s(self) -> float:
        wait = _IDLE_WAIT_S
        if self._conn is None:
            wait = min(wait, max(0.0, self._next_try - time.monotonic()))
        if self._closing.is_set():
            wait = min(wait, max(0.0, self._deadline - time.monotonic()))
        return wait

    def _settle(self) -> None:
        """Count the acknowledged events at the head of the window (in publish order)."""
        spool_acks = 0
        while self._window and self._window[0][1].is_published():
            _, _, from_spool = self._window.popleft()
            spool_acks += from_spool
            self.delivered += 1
        if spool_acks:
            self._spool.ack(spool_acks)

    def _fill(self) -> None:
        """Publish while the window has room: spooled events first, the queue only once the spool is empty."""
        while len(self._window) < IN_FLIGHT_MAX and self._conn is not None:
            room = IN_FLIGHT_MAX - len(self._window)
            lines = self._spool.take(room)
            from_spool = bool(lines)
            if not lines and not self._spool.pending():
                lines = self._drain_queue(room)
            if not lines:
                return
            for line in lines:
                if not self._publish(line, from_spool):
                    return

    def _publish(self, line: bytes, from_spool: bool) -> bool:
        info = self._conn.publish(_topic_of(self.target.prefix, line), line.rstrip(b"\n"))
        self._window.append((line, info, from_spool))
        if info.rc != paho.MQTT_ERR_SUCCESS:  # the link is gone: the window goes back in _lost
            self._lost()
            return False
        return True

    def _drain_queue(self, limit: int | None = None) -> list[bytes]:
        lines: list[bytes] = []
        while limit is None or len(lines) < limit:
            try:
                lines.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return lines

    def _finish(self) -> None:
        """The writer stops: in-flight events back to the spool, ``offline`` said (or left to the will)."""
        with contextlib.suppress(Exception):
            self._settle()
        unacknowledged = list(self._window)
        self._window.clear()
        self._spool.release()
        self._spool.push_front(line for line, _, from_spool in unacknowledged if not from_spool)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(offline=True, wait_s=min(OFFLINE_WAIT_S, max(0.0, self._deadline - time.monotonic())))


def _topic_of(prefix: str, line: bytes) -> str:
    """The topic of an event line (a line that is not an event object goes to ``<prefix>/event``)."""
    try:
        event = json.loads(line)
    except ValueError:
        event = {}
    return event_topic(prefix, event if isinstance(event, dict) else {})


def sink_from_url(url: str, *, spool: str | Path | None = None, events: str | None = None,
                  **options: Any) -> MqttSink:
    """An :class:`MqttSink` from command-line values: ``--mqtt URL``, its spool file (default
    :data:`DEFAULT_SPOOL`) and an event-type list such as ``segment,alert`` (None: all); ``options`` are
    :class:`MqttSink`'s keywords (username, password, ca_file, cert_file, key_file, insecure, client_id, ...)."""
    return MqttSink(url, spool if spool is not None else DEFAULT_SPOOL, types=parse_event_types(events),
                    **options)
