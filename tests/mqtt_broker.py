"""A real MQTT broker (amqtt) on 127.0.0.1 for tests, and a subscriber that records what it gets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

import paho.mqtt.client as paho
from amqtt.broker import Broker
from amqtt.plugins.base import BasePlugin
from paho.mqtt.enums import CallbackAPIVersion

PREFIX = "cams"
AVAILABILITY = f"{PREFIX}/availability"
WAIT_S = 10.0  # upper bound of every poll; the tests pass in well under it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


class Recorder(BasePlugin):
    """A broker plugin that records every PUBLISH the broker accepted, in order, per broker port."""

    received: ClassVar[dict[int, list[tuple[str, bytes]]]] = {}

    @dataclass
    class Config:
        port: int = 0

    async def on_broker_message_received(self, *, client_id: str, message) -> None:
        Recorder.received.setdefault(self.config.port, []).append((message.topic, bytes(message.data)))


class LocalBroker:
    """An amqtt broker on 127.0.0.1:``port`` in its own event-loop thread; ``passwords`` (a password file)
    turns anonymous access off."""

    def __init__(self, port: int | None = None, passwords: str | None = None):
        self.port = port or free_port()
        self.passwords = passwords
        self.url = f"mqtt://127.0.0.1:{self.port}/{PREFIX}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._thread: threading.Thread | None = None

    @property
    def received(self) -> list[tuple[str, bytes]]:
        return Recorder.received.setdefault(self.port, [])

    def start(self) -> LocalBroker:
        auth = ({"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": self.passwords}}
                if self.passwords else {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}})
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "plugins": {**auth, f"{__name__}.Recorder": {"port": self.port}}}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> Broker:
            broker = Broker(config)
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(start(), self._loop).result(WAIT_S)
        return self

    def stop(self) -> None:
        if self._broker is None:
            return
        asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(WAIT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT_S)
        self._loop.close()
        self._broker = None


class Subscriber:
    """A paho client subscribed to ``topic`` (QoS 1) that keeps (topic, payload, retained) of every message."""

    def __init__(self, port: int, topic: str = f"{PREFIX}/#"):
        self.messages: list[tuple[str, bytes, bool]] = []
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-subscriber-{uuid.uuid4().hex[:12]}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(WAIT_S)

    def events(self) -> list[tuple[str, dict]]:
        return [(topic, json.loads(payload)) for topic, payload, _ in self.messages if topic != AVAILABILITY]

    def availability(self) -> list[tuple[str, bool]]:
        return [(payload.decode(), retained) for topic, payload, retained in self.messages if topic == AVAILABILITY]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
