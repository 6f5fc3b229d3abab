"""A component that cannot do its job says why and ends with exit code 4 (Greengrass shows it ERRORED and restarts
it); a device that appears late is picked up; Ctrl-C while waiting for one ends the wait."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.test_interpreter import PushSource
from tests.test_interpreter_faults import QUICK, TOPICS, HangingClient, sent, utterance
from voicebot.edge.audio import AudioError
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.runner import EXIT_UNHEALTHY, ComponentFailed, open_device, serve
from voicebot.edge.stt import TranscribeBackend
from voicebot.messaging import MemoryTransport
from voicebot.protocol import EventMessage


class Opener:
    def __init__(self, fails: int) -> None:
        self.fails, self.calls = fails, 0
        self.tried = threading.Event()

    def __call__(self) -> str:
        self.calls += 1
        self.tried.set()
        if self.calls <= self.fails:
            raise AudioError("no such device 'USB Audio'")
        return "device"


def test_a_device_that_appears_late_is_opened_and_reported_once():
    reports: list[str] = []

    async def report(line: str) -> None:
        reports.append(line)

    opener = Opener(fails=3)
    got = asyncio.run(open_device(opener, "audio output 'device:USB'", asyncio.Event(), report=report, retry_s=0.01))
    assert got == "device" and opener.calls == 4
    assert reports == ["audio output 'device:USB' is not available: no such device 'USB Audio'"]


def test_a_device_that_never_appears_ends_the_component_naming_it():
    with pytest.raises(ComponentFailed, match="audio input 'mic' is not available after 0 s"):
        asyncio.run(open_device(Opener(fails=10**6), "audio input 'mic'", asyncio.Event(), give_up_s=0.1,
                                retry_s=0.01))


def test_stopping_while_waiting_for_a_device_ends_the_wait():
    async def main():
        stop = asyncio.Event()
        opener = Opener(fails=10**6)
        waiting = asyncio.create_task(open_device(opener, "mic", stop, retry_s=30))
        assert await asyncio.to_thread(opener.tried.wait, 5)  # its first try (in a thread) failed
        stop.set()  # then it waits 30 s for the next one: the stop ends that wait
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(main()) is None


def test_serve_reports_why_and_exits_unhealthy():
    transport = MemoryTransport()

    async def cannot(stop: asyncio.Event) -> None:
        raise ComponentFailed("the microphone kept failing for 60 s")

    assert asyncio.run(serve(cannot, transport, TOPICS, "interpreter")) == EXIT_UNHEALTHY
    events = sent(transport, EventMessage, TOPICS.event)
    assert [(e.type, e.detail) for e in events] == [("error", "interpreter stopped: the microphone kept failing for 60 s")]


def test_a_recognizer_that_fails_every_utterance_ends_the_interpreter():
    transport, source = MemoryTransport(), PushSource()
    interpreter = Interpreter(transport, TOPICS, source, TranscribeBackend(client_factory=HangingClient),
                              InterpreterSettings(retry=QUICK, stt_give_up=(2, 0.0)))

    async def main() -> None:
        task = asyncio.create_task(interpreter.run(asyncio.Event()))
        await asyncio.wait_for(source.idle.wait(), 10)
        source.push(utterance() * 2)
        await asyncio.wait_for(task, 20)

    with pytest.raises(ComponentFailed, match="speech recognition \\(transcribe\\) failed 2 utterances in a row"):
        asyncio.run(main())
    assert sum(e.type == "error" for e in sent(transport, EventMessage, TOPICS.event)) == 2


def test_a_failing_background_task_is_logged_with_its_traceback_once_and_published(caplog):
    transport = MemoryTransport()
    interpreter = Interpreter(transport, TOPICS, PushSource(), TranscribeBackend(client_factory=HangingClient))

    async def broken() -> None:
        raise KeyError("final result without text")

    async def main() -> None:
        for _ in range(2):
            task = interpreter._in_background(broken())
            await asyncio.wait({task})

    asyncio.run(main())
    assert caplog.text.count("a background task failed") == 1 and "Traceback" in caplog.text
    details = [e.detail for e in sent(transport, EventMessage, TOPICS.event)]
    assert details == ["interpreter: background task failed: KeyError: 'final result without text'"] * 2
