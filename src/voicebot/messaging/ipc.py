"""The Greengrass IPC adapter: ``GreengrassCoreIPCClientV2``, IoT Core topics through the nucleus, device-local
topics through local pub/sub."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from voicebot.messaging import MessageHandler, TransportError, _map_future
from voicebot.protocol import is_device_local

log = logging.getLogger(__name__)


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
        self._closing = False
        self._on_lost: list[Callable[[str], None]] = []
        self.lost: str | None = None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` when the IPC connection is gone (a subscription stream closed that we did not
        close: the nucleus restarted or dropped us). Nothing comes in any more: the component should exit."""
        self._on_lost.append(callback)
        if self.lost:
            callback(self.lost)

    def _stream_closed(self, topic_filter: str) -> None:
        if self._closing or self.lost:
            return
        self.lost = f"the Greengrass IPC stream for {topic_filter} was closed"
        log.error("%s; nothing more can be received", self.lost)
        for callback in list(self._on_lost):
            try:
                callback(self.lost)
            except Exception:
                log.exception("IPC lost callback failed")

    def reachable(self, timeout_s: float = 2.0) -> bool | None:
        """Whether AWS IoT Core can be reached from this device right now: a TCP connection to the nucleus's own
        data endpoint and MQTT port (IPC itself works offline, so it cannot tell). None when that is unknown."""
        try:
            endpoint = _leaf(self.client.get_configuration(
                component_name=NUCLEUS, key_path=["configuration", "iotDataEndpoint"]).value, "iotDataEndpoint")
            port = _leaf(self.client.get_configuration(
                component_name=NUCLEUS, key_path=["configuration", "mqtt", "port"]).value, "port")
        except Exception as exc:  # not allowed, or no such key
            log.debug("IoT endpoint unknown: %s", exc)
            return None
        if not endpoint:
            return None
        try:
            socket.create_connection((str(endpoint), int(port or 8883)), timeout=timeout_s).close()
        except OSError:
            return False
        return True

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

            _, op = self.client.subscribe_to_topic(topic=topic_filter, on_stream_event=on_local, on_stream_error=on_error,
                                                   on_stream_closed=lambda: self._stream_closed(topic_filter))
        else:

            def on_iot(event) -> None:  # IoTCoreMessage
                handler(event.message.topic_name, bytes(event.message.payload))

            _, op = self.client.subscribe_to_iot_core(
                topic_name=topic_filter, qos=_ipc_qos(qos), on_stream_event=on_iot, on_stream_error=on_error,
                on_stream_closed=lambda: self._stream_closed(topic_filter),
            )
        self._operations.append(op)

    def close(self) -> None:
        self._closing = True
        for op in self._operations:
            try:
                op.close()
            except Exception as exc:
                log.debug("closing IPC stream: %s", exc)
        self._operations.clear()
        self.client.close()


NUCLEUS = "aws.greengrass.Nucleus"


def _leaf(value: object, key: str) -> object:
    """GetConfiguration answers a leaf as {key: value} (or the value itself, depending on the nucleus)."""
    return value.get(key) if isinstance(value, dict) else value


def _ipc_qos(qos: int) -> str:
    from awsiot.greengrasscoreipc.model import QOS

    return QOS.AT_LEAST_ONCE if qos else QOS.AT_MOST_ONCE
