"""Shared fixtures: a real mosquitto per test session, MQTT5 clients, recorders that wait with timeouts."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from voicebot.cloud.llm import LoopbackChatModel
from voicebot.local.broker import MosquittoBroker
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import Topics


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as b:
        yield b


@pytest.fixture
def connect(broker: MosquittoBroker) -> Iterator[Callable[..., Mqtt5Transport]]:
    made: list[Mqtt5Transport] = []

    def factory(name: str = "test") -> Mqtt5Transport:
        t = Mqtt5Transport(ConnectionSettings(broker=broker.url), client_id=f"{name}-{len(made)}-{id(made)}")
        made.append(t)
        return t

    yield factory
    for t in made:
        t.close()


# Component builds in tests never ask a real AWS account whether their version is registered (test_gdk asks its
# stand-in on purpose).
os.environ.setdefault("VOICEBOT_SKIP_REGISTRY_CHECK", "1")

_thing_counter = iter(range(1_000_000))


@pytest.fixture
def topics() -> Topics:
    """A fresh thing name per test, so tests sharing the session broker never see each other's messages."""
    return Topics("voicebot", f"test-thing-{next(_thing_counter)}")


class Recorder:
    """Collects (topic, payload) from a transport subscription; ``wait_for`` blocks with a timeout, never sleeps."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._cond:
            self.messages.append((topic, payload))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 30.0) -> list:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.messages), timeout=timeout)
            if not ok:
                raise AssertionError(f"timed out after {timeout} s; got {len(self.messages)} messages: "
                                     f"{[(t, p[:120]) for t, p in self.messages]}")
            return list(self.messages)

    def on(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.messages if t == topic]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


class RecordingModel(LoopbackChatModel):
    """The offline responder, recording every prompt it was given (to check what the model saw)."""

    prompts: list[list[BaseMessage]] = []

    def _stream(self, messages, stop=None, run_manager=None, **kwargs: Any):
        self.prompts.append(list(messages))
        yield from super()._stream(messages, stop, run_manager, **kwargs)


@pytest.fixture
def recording_model() -> RecordingModel:
    return RecordingModel(prompts=[])


@pytest.fixture
def waiter() -> Callable[[queue.Queue, float], Any]:
    def get(q: queue.Queue, timeout: float = 30.0) -> Any:
        return q.get(timeout=timeout)

    return get


@pytest.fixture(scope="session")
def vosk():
    """The Korean Vosk model, loaded once and reused by every test (as on the device)."""
    from voicebot.edge.stt import VoskBackend

    return VoskBackend()
