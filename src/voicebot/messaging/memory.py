"""An in-memory double of the Transport port, for fast and deterministic tests of the loops."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from voicebot.messaging import MessageHandler
from voicebot.protocol import topic_matches


class MemoryTransport:
    """Delivers what is ``deliver``-ed to matching subscribers, at once, in the caller's thread; keeps what its owner
    publishes in ``sent`` and does not echo it back (like an MQTT subscription with no-local), so a loop under test
    gets no help from its own messages."""

    description = "memory"

    def __init__(self) -> None:
        self.handlers: list[tuple[str, MessageHandler]] = []
        self.sent: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int) -> Future[None]:
        with self._lock:
            self.sent.append((topic, payload))
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def subscribe(self, topic_filter: str, qos: int, handler: MessageHandler) -> None:
        with self._lock:
            self.handlers.append((topic_filter, handler))

    def deliver(self, topic: str, payload: bytes) -> None:
        with self._lock:
            handlers = [h for f, h in self.handlers if topic_matches(f, topic)]
        for handler in handlers:
            handler(topic, payload)

    def close(self) -> None:
        pass
