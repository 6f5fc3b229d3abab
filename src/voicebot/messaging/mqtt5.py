"""The MQTT5 adapter (awscrt): plain TCP to a local broker, or mTLS to AWS IoT Core."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import urlparse

from voicebot.messaging import ConnectionSettings, MessageHandler, TransportError, _map_future
from voicebot.protocol import topic_matches

log = logging.getLogger(__name__)


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
#: Longest wait between reconnect attempts to a plain broker (a local mosquitto, the Greengrass-less dev stack): a
#: broker that comes back is found within about this long. IoT Core keeps the SDK's 30 s cap and its jitter, so a
#: fleet that lost its connection at once does not come back at once.
LOCAL_MAX_RECONNECT_MS = 2_000
IOT_CORE_MAX_RECONNECT_MS = 30_000
#: A connection the broker closes this soon after accepting it, this many times in a row, was taken over by another
#: client with the same id (two processes for one thing), as far as a broker that does not say so lets us tell.
SHORT_LIVED_S = 5.0
SHORT_LIVED_IN_A_ROW = 3


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
        self.disconnections = 0
        """How many times the client has connected (1 after the first, +1 per reconnect): for health checks."""
        self._closed = False
        self.taken_over = False
        self._online = False  # connected right now (``_connected``: ever connected)
        self._connected_at = 0.0
        self._short_lived = 0  # connections in a row that the broker closed within seconds
        """Another client connected with the same client id (the same thing name twice): this one stopped."""
        self._on_lost: list[Callable[[str], None]] = []
        # A named client (a device component) keeps its session for two minutes: after a blip the broker resumes its
        # subscriptions and hands over the QoS1 messages it queued meanwhile (REJOIN_POST_SUCCESS needs an expiry);
        # after a longer outage those answers would be stale anyway.
        expiry = SESSION_EXPIRY_S if client_id else 0
        client_id = client_id or f"voicebot-{uuid.uuid4().hex[:12]}"
        self.client_id = client_id
        connect = mqtt5.ConnectPacket(client_id=client_id, keep_alive_interval_sec=60,
                                      session_expiry_interval_sec=expiry)
        common = dict(
            connect_options=connect,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_QOS0_PUBLISH_ON_DISCONNECT,
            min_reconnect_delay_ms=250,
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
                host_name=settings.endpoint, port=8883, tls_ctx=io.ClientTlsContext(tls),
                max_reconnect_delay_ms=IOT_CORE_MAX_RECONNECT_MS, **common
            )
        else:
            url = urlparse(settings.broker or "mqtt://127.0.0.1:1883")
            if url.scheme not in ("mqtt", "tcp"):
                raise TransportError(f"unsupported broker URL {settings.broker!r} (use mqtt://HOST:PORT)")
            self.description = f"mqtt://{url.hostname}:{url.port or 1883}"
            self._peer = (url.hostname or "127.0.0.1", url.port or 1883)
            options = mqtt5.ClientOptions(host_name=url.hostname or "127.0.0.1", port=url.port or 1883,
                                          max_reconnect_delay_ms=LOCAL_MAX_RECONNECT_MS,
                                          retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE, **common)
        self._client = mqtt5.Client(options)
        log.log(logging.INFO if wait_forever else logging.DEBUG, "connecting to %s as %s", self.description, client_id)
        self._client.start()
        try:
            if not self._wait_connected(min(connect_timeout, 2.0) if wait_forever else connect_timeout):
                if not wait_forever:
                    raise TransportError(f"could not connect to {self.description} within {connect_timeout:.0f} s")
                # A device component outlives a broker that is down (or not up yet): keep trying, say so once.
                log.error("cannot reach %s yet; still trying (every %.0f s at most)", self.description,
                          options.max_reconnect_delay_ms / 1000)
                self._wait_connected(None)
                if self.taken_over:
                    raise TransportError(f"{self.description}: another client took over {self.client_id!r}")
                log.info("connected to %s", self.description)
        except BaseException:  # (Ctrl-C and SIGTERM too: the client's threads must not keep the process alive)
            self.close()
            raise

    def _wait_connected(self, seconds: float | None) -> bool:
        """Wait in short steps, so that a signal handler (Ctrl-C, SIGTERM) runs between them."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._connected.wait(0.1):
            if self.taken_over or (deadline is not None and time.monotonic() >= deadline):
                return False
        return True

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
        self._online, self._connected_at = True, time.monotonic()
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

    def wait_for_disconnections(self, count: int, timeout: float) -> bool:
        """Block until the client has lost its connection ``count`` times."""
        with self._connections:
            return self._connections.wait_for(lambda: self.disconnections >= count, timeout)

    def _on_connect_failure(self, data) -> None:
        log.warning("connection to %s failed: %s (retrying)", self.description, data.exception)

    def _on_disconnected(self, data) -> None:
        was_online, self._online = self._online, False
        with self._connections:
            self.disconnections += 1
            self._connections.notify_all()
        packet = getattr(data, "disconnect_packet", None)
        if packet is not None and packet.reason_code == self._mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER:
            self._taken_over("the broker says the session was taken over")  # (IoT Core and MQTT5 brokers that say so)
            return
        # Brokers that just close the socket (Debian's mosquitto 2.0.11): the same client id twice shows as every
        # connection being closed right after it was accepted, while the broker is plainly reachable.
        if was_online and time.monotonic() - self._connected_at < SHORT_LIVED_S:
            self._short_lived += 1
            if self._short_lived >= SHORT_LIVED_IN_A_ROW:
                self._taken_over(f"the broker closed each of the last {SHORT_LIVED_IN_A_ROW} connections within "
                                 f"{SHORT_LIVED_S:.0f} s of accepting them")
                return
        elif was_online:
            self._short_lived = 0
        if not self._closed:
            log.warning("disconnected from %s: %s (reconnecting)", self.description, data.exception)

    def _taken_over(self, why: str) -> None:
        """The broker let another client with our client id in. Reconnecting would throw that one out in turn, and
        the two would take turns for ever: stop, say so once, and let the owner decide (components exit)."""
        if self.taken_over or self._closed:
            return
        self.taken_over = True
        reason = (f"another client connected to {self.description} as {self.client_id!r} (MQTT5 session taken "
                  f"over; {why}): is the same thing name running twice? this one stops")
        log.error("%s", reason)
        self.close()  # (stop() only schedules the stop: safe on the client's own thread, before any reconnect)
        for callback in list(self._on_lost):
            try:
                callback(reason)
            except Exception:
                log.exception("connection-lost callback failed")

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` (on an SDK thread) when the connection is gone for good (session taken over)."""
        self._on_lost.append(callback)
        if self.taken_over:
            callback("session taken over")

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether the broker (IoT Core, the local one) is reachable: this client is connected to it."""
        return self.connected

    @property
    def connected(self) -> bool:
        """Connected to the broker right now."""
        return self._online and not self._closed and not self.taken_over

    # -- Transport ---------------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int) -> Future[None]:
        mqtt5 = self._mqtt5
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos))
        return _map_future(self._client.publish(packet), lambda _: None)

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        self.subscribe_future(topic_filter, qos, handler).result(timeout=15)

    def subscribe_future(self, topic_filter: str, qos: int, handler: MessageHandler) -> Future[None]:
        """Subscribe; the future completes when the broker has granted it (or fails with TransportError)."""
        sub = _Subscription(topic_filter, qos, handler)
        self._subs.add(sub)

        def granted(suback) -> None:
            codes = [int(c) for c in suback.reason_codes]
            if any(c >= 0x80 for c in codes):
                raise TransportError(f"subscription to {topic_filter} refused by {self.description} (reason {codes})")

        return _map_future(self._send_subscribe(sub), granted)

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
