"""Messaging: the one port every component and handler sends and receives through, and its adapters.

* ``Transport`` (the port): publish bytes with QoS (a future), subscribe with a callback, close. ``send`` and
  ``subscribe`` are its awaitable forms, with timeouts, for asyncio loops.
* ``Mqtt5Transport`` (mqtt5.py): MQTT5 through awscrt, plain TCP to a local broker or mTLS to AWS IoT Core.
* ``IpcTransport`` (ipc.py): Greengrass IPC (``GreengrassCoreIPCClientV2``); device-local topics go over local
  pub/sub, everything else to IoT Core through the nucleus's own connection.
* ``MemoryTransport`` (memory.py): an in-memory double for fast, deterministic loop tests.

Callbacks run on SDK threads; loops take them with ``handoff_to_loop``. Reconnecting is the adapters' job alone:
awscrt's MQTT5 client reconnects with capped exponential backoff and re-subscribes whenever a reconnect did not
resume the session. Neither the device components nor the cloud handlers know which adapter they talk to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class TransportError(RuntimeError):
    pass


@runtime_checkable
class Transport(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int) -> Future[None]:
        """Send one message. Thread-safe. The future completes when the message is acknowledged (QoS1) or sent."""

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        """Receive messages matching ``topic_filter``. ``handler(topic, payload)`` runs on an SDK thread."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach the message broker: ``broker`` for plain MQTT5, or ``endpoint``+``cert``+``key`` for IoT Core."""

    broker: str | None = None
    """``mqtt://HOST:PORT`` of a plain MQTT5 broker (a local mosquitto)."""
    endpoint: str | None = None
    """AWS IoT Core data endpoint (``xxxx-ats.iot.<region>.amazonaws.com``)."""
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    ipc: bool = False
    """Use Greengrass IPC (inside a Greengrass component)."""


def handoff_to_loop(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[str, bytes]]) -> MessageHandler:
    """A transport callback that only hands the message to the asyncio loop (SDK threads must not do the work)."""

    def handler(topic: str, payload: bytes) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (topic, payload))
        except RuntimeError:  # (its loop has stopped: the component is shutting down and nobody is left to take it)
            log.debug("message on %s after its loop stopped: dropped", topic)

    return handler


def publish_and_wait(transport: Transport, topic: str, payload: bytes, qos: int, timeout: float = 10.0) -> None:
    """Blocking publish, for synchronous callers such as the handlers in the local rules engine."""
    transport.publish(topic, payload, qos).result(timeout=timeout)


class Outbox:
    """Publishes without blocking the caller's loop, logs failures, and can wait until everything went out.

    While the connection is down, QoS1 messages wait in the client's offline queue and go out on reconnect; at most
    ``max_pending`` of them, so a device offline for hours does not grow without bound (newer ones are dropped).
    """

    def __init__(self, transport: Transport, owner: str, *, max_pending: int = 500) -> None:
        self.transport = transport
        self.owner = owner
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: set[Future[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, topic: str, payload: bytes, qos: int) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.error("%s: %d messages are waiting for the connection; dropped %d (latest to %s)", self.owner,
                          len(self._pending), self.dropped, topic)
            return
        try:
            future = self.transport.publish(topic, payload, qos)
        except Exception as exc:  # the transport refused outright (closed): report, keep running
            log.error("%s: publish to %s failed: %s", self.owner, topic, exc)
            return
        self._pending.add(future)

        def done(f: Future[None]) -> None:
            self._pending.discard(f)
            if f.exception():
                log.warning("%s: publish to %s failed: %s", self.owner, topic, f.exception())

        future.add_done_callback(done)

    async def drain(self, seconds: float = 30.0) -> None:
        """Wait (at most ``seconds``) until every message handed over has been sent (QoS1: acknowledged)."""
        pending = [asyncio.wrap_future(f) for f in list(self._pending)]
        if pending:
            await asyncio.wait(pending, timeout=seconds)


async def send(transport: Transport, topic: str, payload: bytes, qos: int, *, wait_s: float = 10.0) -> None:
    """Publish and wait for the acknowledgement without blocking the loop (TimeoutError after ``wait_s``)."""
    async with asyncio.timeout(wait_s):
        await asyncio.wrap_future(transport.publish(topic, payload, qos))


async def subscribe(transport: Transport, topic_filter: str, qos: int, handler: MessageHandler, *,
                    wait_s: float = 20.0) -> None:
    """Subscribe and wait for the broker to grant it, without blocking the loop: through the adapter's own future
    where it has one (MQTT5), else in a thread (Greengrass IPC subscribes synchronously)."""
    async with asyncio.timeout(wait_s):
        subscribe_future = getattr(transport, "subscribe_future", None)
        if subscribe_future is not None:
            await asyncio.wrap_future(subscribe_future(topic_filter, qos, handler))
        else:
            await asyncio.to_thread(transport.subscribe, topic_filter, qos, handler)


def _map_future(source: Future, fn: Callable) -> Future:
    target: Future = Future()

    def done(f: Future) -> None:
        exc = f.exception()
        if exc is not None:
            target.set_exception(exc)
            return
        try:
            target.set_result(fn(f.result()))
        except Exception as mapped:  # the mapping itself refused the result (a refused subscription)
            target.set_exception(mapped)

    source.add_done_callback(done)
    return target


def connect(settings: ConnectionSettings, *, client_id: str | None = None, wait_forever: bool = False) -> Transport:
    """The one place that turns connection settings into a transport. Components wait for a broker that is down."""
    if settings.ipc:
        return IpcTransport()
    return Mqtt5Transport(settings, client_id=client_id, wait_forever=wait_forever)


from voicebot.messaging.ipc import IpcTransport  # noqa: E402 - the adapters use the port above
from voicebot.messaging.memory import MemoryTransport  # noqa: E402
from voicebot.messaging.mqtt5 import Mqtt5Transport, disable_nagle  # noqa: E402

__all__ = ["ConnectionSettings", "IpcTransport", "MemoryTransport", "MessageHandler", "Mqtt5Transport", "Outbox",
           "Transport", "TransportError", "connect", "disable_nagle", "handoff_to_loop", "publish_and_wait", "send",
           "subscribe"]
