"""Message transports behind one small interface: publish bytes with QoS, subscribe with a callback, close.

* ``Mqtt5Transport``: MQTT5 through awscrt, plain TCP to a local broker or mTLS to AWS IoT Core.
* ``IpcTransport``: Greengrass IPC (``GreengrassCoreIPCClientV2``); device-local topics go over local pub/sub,
  everything else to IoT Core through the nucleus's own connection.

Callbacks run on SDK threads. Components hand them off to their asyncio loop with ``handoff_to_loop``.
Reconnecting is the transport's job alone: awscrt's MQTT5 client reconnects with capped exponential backoff, and this
module re-subscribes whenever a reconnect did not resume the session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from voicebot.protocol import is_device_local, topic_matches

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
        loop.call_soon_threadsafe(queue.put_nowait, (topic, payload))

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


@dataclass
class _Subscription:
    topic_filter: str
    qos: int
    handler: MessageHandler


@dataclass
class _Subscriptions:
    items: list[_Subscription] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sub: _Subscription) -> None:
        with self.lock:
            self.items.append(sub)

    def dispatch(self, topic: str, payload: bytes) -> None:
        with self.lock:
            handlers = [s.handler for s in self.items if topic_matches(s.topic_filter, topic)]
        for handler in handlers:
            try:
                handler(topic, payload)
            except Exception:  # a bad handler must not take the connection down
                log.exception("message handler for %s failed", topic)


SESSION_EXPIRY_S = 120


class Mqtt5Transport:
    """MQTT5 client (awscrt). Plain TCP when ``broker`` is given, mTLS to IoT Core when ``endpoint`` is given."""

    def __init__(self, settings: ConnectionSettings, *, client_id: str | None = None, connect_timeout: float = 15.0,
                 wait_forever: bool = False):
        from awscrt import io, mqtt5

        self._mqtt5 = mqtt5
        self._subs = _Subscriptions()
        self._connected = threading.Event()
        self._connections = threading.Condition()
        self.connections = 0
        """How many times the client has connected (1 after the first, +1 per reconnect): for health checks."""
        self._closed = False
        # A named client (a device component) keeps its session for two minutes: after a blip the broker resumes its
        # subscriptions and hands over the QoS1 messages it queued meanwhile (REJOIN_POST_SUCCESS needs an expiry);
        # after a longer outage those answers would be stale anyway.
        expiry = SESSION_EXPIRY_S if client_id else 0
        client_id = client_id or f"voicebot-{uuid.uuid4().hex[:12]}"
        connect = mqtt5.ConnectPacket(client_id=client_id, keep_alive_interval_sec=60,
                                      session_expiry_interval_sec=expiry)
        common = dict(
            connect_options=connect,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_QOS0_PUBLISH_ON_DISCONNECT,
            min_reconnect_delay_ms=250,
            max_reconnect_delay_ms=30_000,
            on_publish_callback_fn=self._on_publish,
            on_lifecycle_event_connection_success_fn=self._on_connected,
            on_lifecycle_event_connection_failure_fn=self._on_connect_failure,
            on_lifecycle_event_disconnection_fn=self._on_disconnected,
        )
        if settings.endpoint:
            if not (settings.cert and settings.key):
                raise TransportError("--endpoint needs --cert and --key (and usually --ca)")
            tls = io.TlsContextOptions.create_client_with_mtls_from_path(settings.cert, settings.key)
            if settings.ca:
                tls.override_default_trust_store_from_path(None, settings.ca)
            self.description = f"IoT Core {settings.endpoint}"
            self._peer = (settings.endpoint, 8883)
            options = mqtt5.ClientOptions(
                host_name=settings.endpoint, port=8883, tls_ctx=io.ClientTlsContext(tls), **common
            )
        else:
            url = urlparse(settings.broker or "mqtt://127.0.0.1:1883")
            if url.scheme not in ("mqtt", "tcp"):
                raise TransportError(f"unsupported broker URL {settings.broker!r} (use mqtt://HOST:PORT)")
            self.description = f"mqtt://{url.hostname}:{url.port or 1883}"
            self._peer = (url.hostname or "127.0.0.1", url.port or 1883)
            options = mqtt5.ClientOptions(host_name=url.hostname or "127.0.0.1", port=url.port or 1883, **common)
        self._client = mqtt5.Client(options)
        self._client.start()
        if not self._connected.wait(min(connect_timeout, 5.0) if wait_forever else connect_timeout):
            if not wait_forever:
                self._client.stop()
                raise TransportError(f"could not connect to {self.description} within {connect_timeout:.0f} s")
            # A device component outlives a broker that is down (or not up yet): keep trying, say so once.
            log.error("cannot reach %s yet; still trying (every few seconds, up to every 30 s)", self.description)
            self._connected.wait()
            log.info("connected to %s", self.description)

    # -- SDK callbacks (SDK threads) ---------------------------------------------------------------------------------

    def _on_publish(self, data) -> None:  # PublishReceivedData
        packet = data.publish_packet
        self._subs.dispatch(packet.topic, bytes(packet.payload or b""))

    def _on_connected(self, data) -> None:  # LifecycleConnectSuccessData
        disable_nagle(self._peer)
        resumed = bool(data.connack_packet and data.connack_packet.session_present)
        if self._connected.is_set():
            log.info("reconnected to %s (session %s)", self.description, "resumed" if resumed else "new")
        self._connected.set()
        subacks = []
        if not resumed:
            with self._subs.lock:
                subs = list(self._subs.items)
            subacks = [self._send_subscribe(sub) for sub in subs]
        # Counted once the broker has acknowledged the renewed subscriptions (never blocking this SDK thread).
        pending = [len(subacks)]

        def counted(_: Future | None = None) -> None:
            with self._connections:
                pending[0] -= 1
                if pending[0] < 0:
                    self.connections += 1
                    self._connections.notify_all()

        for future in subacks:
            future.add_done_callback(counted)
        counted()

    def wait_for_connections(self, count: int, timeout: float) -> bool:
        """Block until the client has connected ``count`` times (its subscriptions are renewed by then)."""
        with self._connections:
            return self._connections.wait_for(lambda: self.connections >= count, timeout)

    def _on_connect_failure(self, data) -> None:
        log.warning("connection to %s failed: %s (retrying)", self.description, data.exception)

    def _on_disconnected(self, data) -> None:
        if not self._closed:
            log.warning("disconnected from %s: %s (reconnecting)", self.description, data.exception)

    # -- Transport ---------------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int) -> Future[None]:
        mqtt5 = self._mqtt5
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos))
        return _map_future(self._client.publish(packet), lambda _: None)

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        sub = _Subscription(topic_filter, qos, handler)
        self._subs.add(sub)
        suback = self._send_subscribe(sub).result(timeout=15)
        codes = [int(c) for c in suback.reason_codes]
        if any(c >= 0x80 for c in codes):
            raise TransportError(f"subscription to {topic_filter} refused by {self.description} (reason {codes})")

    def _send_subscribe(self, sub: _Subscription):
        mqtt5 = self._mqtt5
        subscription = mqtt5.Subscription(topic_filter=sub.topic_filter, qos=mqtt5.QoS(sub.qos))
        packet = mqtt5.SubscribePacket(subscriptions=[subscription])
        return self._client.subscribe(packet)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.stop()


def disable_nagle(peer: tuple[str, int]) -> None:
    """Set TCP_NODELAY on this process's sockets to ``peer``.

    The awscrt release that amazon-transcribe pins opens sockets with Nagle's algorithm on (the option arrived in
    aws-c-io in 2026), so any publish over about 4 KB (an audio part) waited ~40 ms for a delayed ACK. The socket is
    the CRT's; we only flip one option on it.
    """
    try:
        import psutil

        host_ips = {info[4][0] for info in socket.getaddrinfo(peer[0], peer[1], proto=socket.IPPROTO_TCP)}
        for conn in psutil.Process().net_connections(kind="tcp"):
            if conn.fd >= 0 and conn.raddr and conn.raddr.port == peer[1] and conn.raddr.ip in host_ips:
                with socket.socket(fileno=os.dup(conn.fd)) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (ImportError, OSError) as exc:
        log.debug("could not set TCP_NODELAY towards %s: %s", peer, exc)


def _map_future(source: Future, fn: Callable) -> Future:
    target: Future = Future()

    def done(f: Future) -> None:
        exc = f.exception()
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(fn(f.result()))

    source.add_done_callback(done)
    return target


class IpcTransport:
    """Greengrass IPC. IoT Core topics through ``*_iot_core``; device-local topics through local pub/sub."""

    def __init__(self, client=None) -> None:
        if client is None:
            from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

            try:
                # One callback thread: messages reach the handlers in the order they arrived (the default pool of
                # threads may reorder two sentences). The handlers only hand messages to a loop, so one is enough.
                client = GreengrassCoreIPCClientV2(executor=ThreadPoolExecutor(max_workers=1,
                                                                               thread_name_prefix="ipc-callbacks"))
            except Exception as exc:  # the SDK raises plain exceptions when the Greengrass env vars are missing
                raise TransportError(f"cannot connect to Greengrass IPC (not running under Greengrass?): {exc}") from exc
        self.client = client
        self.description = "Greengrass IPC"
        self._operations: list = []

    def publish(self, topic: str, payload: bytes, qos: int) -> Future[None]:
        if is_device_local(topic):
            from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage

            message = PublishMessage(binary_message=BinaryMessage(message=payload))
            return _map_future(self.client.publish_to_topic_async(topic=topic, publish_message=message), lambda _: None)
        return _map_future(
            self.client.publish_to_iot_core_async(topic_name=topic, qos=_ipc_qos(qos), payload=payload), lambda _: None
        )

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        def on_error(exc: Exception) -> bool:
            log.warning("IPC subscription %s error: %s", topic_filter, exc)
            return False  # keep the stream open

        if is_device_local(topic_filter):

            def on_local(event) -> None:  # SubscriptionResponseMessage
                msg = event.binary_message
                if msg is not None:
                    topic = msg.context.topic if msg.context else topic_filter
                    handler(topic, bytes(msg.message))

            _, op = self.client.subscribe_to_topic(topic=topic_filter, on_stream_event=on_local, on_stream_error=on_error)
        else:

            def on_iot(event) -> None:  # IoTCoreMessage
                handler(event.message.topic_name, bytes(event.message.payload))

            _, op = self.client.subscribe_to_iot_core(
                topic_name=topic_filter, qos=_ipc_qos(qos), on_stream_event=on_iot, on_stream_error=on_error
            )
        self._operations.append(op)

    def close(self) -> None:
        for op in self._operations:
            try:
                op.close()
            except Exception as exc:
                log.debug("closing IPC stream: %s", exc)
        self._operations.clear()
        self.client.close()


def _ipc_qos(qos: int) -> str:
    from awsiot.greengrasscoreipc.model import QOS

    return QOS.AT_LEAST_ONCE if qos else QOS.AT_MOST_ONCE


def connect(settings: ConnectionSettings, *, client_id: str | None = None, wait_forever: bool = False) -> Transport:
    """The one place that turns connection settings into a transport. Components wait for a broker that is down."""
    if settings.ipc:
        return IpcTransport()
    return Mqtt5Transport(settings, client_id=client_id, wait_forever=wait_forever)
