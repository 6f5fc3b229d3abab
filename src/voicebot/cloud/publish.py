"""Where the cloud handlers send their messages: AWS IoT Core (iot-data) in Lambda, the local broker on a laptop."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from voicebot.messaging import Transport, publish_and_wait
from voicebot.protocol import MAX_SEQ, QOS_AT_LEAST_ONCE, EventMessage, Message, Topics, encode

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int) -> None: ...


class IotDataPublisher:
    """Publishes through the ``iot-data`` API, as a Lambda does (IAM ``iot:Publish`` on the topic)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.client.publish(topic=topic, qos=qos, payload=payload)


class TransportPublisher:
    """Publishes through an MQTT transport and waits for the broker's acknowledgement (local mode)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        publish_and_wait(self.transport, topic, payload, qos)


def send(publisher: Publisher, topic: str, message: Message, qos: int = QOS_AT_LEAST_ONCE) -> None:
    publisher.publish(topic, encode(message), qos)


def send_error(
    publisher: Publisher, topics: Topics, *, source: str, detail: str, request_id: str | None = None,
    seq: int | None = None, last: bool | None = None,
) -> bool:
    """Tell whoever watches the device that something went wrong. Never raises (an error report must not fail
    twice); False when it could not be published. Values copied from a bad message are dropped if they are bad too."""
    if not (isinstance(request_id, str) and 0 < len(request_id) <= 64):
        request_id = None
    if not (isinstance(seq, int) and 0 <= seq <= MAX_SEQ):
        seq = None
    try:
        send(publisher, topics.event, EventMessage(
            source=source, type="error", request_id=request_id, seq=seq, last=last, detail=detail[:500],
        ))
    except Exception as exc:
        log.error("could not publish error event (%s) to %s: %s", detail[:200], topics.event,
                  str(exc) or type(exc).__name__)
        return False
    return True
