"""Recognizer faults cannot stall or kill the microphone loop: an unreachable Transcribe, a final result that never
comes, an STT outage during the stop word; one Transcribe client serves every utterance; the mic hand-off drops the
oldest blocks instead of raising on the loop."""

from __future__ import annotations

import asyncio
import threading

from tests.speech_fixtures import frames_of, silence, spoken
from tests.test_echo_guard import speaking
from tests.test_interpreter import SCRIPT, FakeTranscribeClient, FakeTranscribeStream, PushSource
from voicebot.edge.audio import FrameRing
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.stt import RetryPolicy, SttResult, TranscribeBackend
from voicebot.messaging import MemoryTransport
from voicebot.protocol import ControlMessage, EventMessage, Topics, TranscriptMessage, decode

QUICK = RetryPolicy(first_delay_s=0.01, max_delay_s=0.02, attempts=2, open_timeout_s=0.2, end_timeout_s=0.3)
TOPICS = Topics("voicebot", "faults")


class HangingClient:
    """A Transcribe client whose connection never completes (an unreachable endpoint behind a silent firewall)."""

    def __init__(self) -> None:
        self.calls = 0

    async def start_stream_transcription(self, **kwargs):
        self.calls += 1
        await asyncio.Event().wait()


def utterance() -> list[bytes]:
    return frames_of(silence(0.3)) + frames_of(spoken("오늘 날씨 어때요")) + frames_of(silence(1.2))


def sent(transport: MemoryTransport, model, topic: str) -> list:
    return [decode(model, p) for t, p in transport.sent if t == topic]


async def run_until_idle(interpreter: Interpreter, source: PushSource, frames: list[bytes]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(interpreter.run(stop))
    await asyncio.wait_for(source.idle.wait(), 10)
    source.push(frames)
    await asyncio.wait_for(source.idle.wait(), 10)  # every frame went through the loop
    await interpreter.drain()
    stop.set()
    await task


def test_an_unreachable_transcribe_never_stalls_the_microphone_loop():
    client = HangingClient()
    transport, source = MemoryTransport(), PushSource()
    interpreter = Interpreter(transport, TOPICS, source, TranscribeBackend(client_factory=lambda: client),
                              InterpreterSettings(retry=QUICK))
    asyncio.run(run_until_idle(interpreter, source, utterance() * 2))
    assert client.calls >= 2  # it tried, in the background, while the frames kept flowing
    errors = [e for e in sent(transport, EventMessage, TOPICS.event) if e.type == "error"]
    assert errors and all("speech recognition failed" in e.detail for e in errors)
    assert not sent(transport, TranscriptMessage, TOPICS.transcript)
    # The person is not left in silence: the player is told to say so, once per utterance that failed.
    controls = sent(transport, ControlMessage, TOPICS.control)
    assert [c.action for c in controls] == ["apologise"] * len(controls) and len(controls) == 2
    assert {c.request_id for c in controls} == {e.request_id for e in errors}


class NoFinalStream(FakeTranscribeStream):
    """Gives partials but never a final result, and never ends its output."""

    async def end_stream(self) -> None:
        self.ended = True


def test_a_final_result_that_never_comes_uses_what_was_recognised():
    stream = NoFinalStream(SCRIPT)
    transport, source = MemoryTransport(), PushSource()
    backend = TranscribeBackend(client_factory=lambda: FakeTranscribeClient([stream]))
    interpreter = Interpreter(transport, TOPICS, source, backend, InterpreterSettings(retry=QUICK))
    asyncio.run(run_until_idle(interpreter, source, utterance()))
    completed = [m for m in sent(transport, TranscriptMessage, TOPICS.transcript) if m.state == "completed"]
    assert [m.text for m in completed] == ["오늘"]  # the partial it had, after end_timeout_s
    # Each completed transcript tells the player to expect an answer (it apologises by itself if none comes).
    assert [(c.action, c.request_id) for c in sent(transport, ControlMessage, TOPICS.control)] == [
        ("expect", completed[0].request_id)]


def test_one_transcribe_client_serves_every_utterance_and_aborted_streams_are_ended():
    streams = [FakeTranscribeStream(SCRIPT) for _ in range(2)]
    made = []

    def factory():
        made.append(FakeTranscribeClient(streams))
        return made[-1]

    transport, source = MemoryTransport(), PushSource()
    interpreter = Interpreter(transport, TOPICS, source, TranscribeBackend(client_factory=factory),
                              InterpreterSettings(retry=QUICK))
    asyncio.run(run_until_idle(interpreter, source, utterance() + utterance()))
    assert len(made) == 1 and len(made[0].requests) == 2


class FailingOpen:
    name = "down"

    async def open(self):
        raise ConnectionError("recognizer unreachable")


def test_an_stt_outage_during_the_stop_word_keeps_the_device_running():
    transport, source = MemoryTransport(), PushSource()
    interpreter = Interpreter(transport, TOPICS, source, FailingOpen(),
                              InterpreterSettings(retry=QUICK, stop_word_enabled=True), stop_word_stt=FailingOpen())

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(source.idle.wait(), 10)
        interpreter._on_player_state(speaking())
        source.push(utterance())  # someone speaks while the device speaks: the stop-word listener starts
        await asyncio.wait_for(source.idle.wait(), 10)
        await interpreter.drain()
        assert not task.done()  # still listening
        stop.set()
        await task

    asyncio.run(main())
    assert not sent(transport, TranscriptMessage, TOPICS.transcript)


def test_the_microphone_ring_drops_the_oldest_blocks_and_never_raises():
    async def main() -> tuple[list[bytes], int]:
        ring = FrameRing(asyncio.get_running_loop(), size=50)
        pusher = threading.Thread(target=lambda: [ring.push(bytes([i % 256])) for i in range(300)])
        pusher.start()
        await asyncio.to_thread(pusher.join)  # the loop did not read while the audio thread pushed
        got = [await ring.get() for _ in range(50)]
        return got, ring.dropped

    got, dropped = asyncio.run(main())
    assert dropped == 250 and got == [bytes([i % 256]) for i in range(250, 300)]




class ScriptedSession:
    """A recognizer session that says ``partial`` once audio arrives and ``final`` when the audio ends."""

    def __init__(self, partial: str, final: str) -> None:
        self.partial, self.final = partial, final
        self.results_queue: asyncio.Queue = asyncio.Queue()
        self.sent = 0

    async def send(self, pcm: bytes) -> None:
        self.sent += 1
        if self.sent == 5:
            await self.results_queue.put(SttResult(self.partial, final=False))

    async def finish(self) -> None:
        await self.results_queue.put(SttResult(self.final, final=True))
        await self.results_queue.put(None)

    async def results(self):
        while (item := await self.results_queue.get()) is not None:
            yield item

    async def close(self) -> None:
        pass


class ScriptedBackend:
    def __init__(self, name: str, partial: str, final: str) -> None:
        self.name, self.partial, self.final = name, partial, final
        self.sessions: list[ScriptedSession] = []

    async def open(self) -> ScriptedSession:
        self.sessions.append(ScriptedSession(self.partial, self.final))
        return self.sessions[-1]


def test_the_rest_of_the_stop_word_does_not_become_a_question():
    transport, source = MemoryTransport(), PushSource()
    questions = ScriptedBackend("questions", "해 줘", "해 줘")  # what the rest of the word would be heard as
    stop_words = ScriptedBackend("stop", "그만", "그만 해 줘")
    interpreter = Interpreter(transport, TOPICS, source, questions,
                              InterpreterSettings(retry=QUICK, stop_word_enabled=True, stop_word="그만"),
                              stop_word_stt=stop_words)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(source.idle.wait(), 10)
        interpreter._on_player_state(speaking())
        source.push(utterance())  # "그만 해 줘" while the device speaks: the stop word is heard early in it
        await asyncio.wait_for(source.idle.wait(), 10)
        await interpreter.drain()
        stop.set()
        await task

    asyncio.run(main())
    controls = [p for t, p in transport.sent if t == TOPICS.control]
    assert len(controls) == 1  # the answer was cancelled once
    assert not questions.sessions  # and what followed the stop word never reached the question recognizer
    assert not sent(transport, TranscriptMessage, TOPICS.transcript)


def test_an_utterance_cut_by_the_device_speaking_ends_its_transcribe_stream():
    stream = FakeTranscribeStream(SCRIPT)
    transport, source = MemoryTransport(), PushSource()
    interpreter = Interpreter(transport, TOPICS, source,
                              TranscribeBackend(client_factory=lambda: FakeTranscribeClient([stream])),
                              InterpreterSettings(retry=QUICK))
    frames = frames_of(silence(0.3)) + frames_of(spoken("오늘 날씨 어때요"))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(source.idle.wait(), 10)
        source.push(frames[: len(frames) * 2 // 3])  # mid-sentence...
        await asyncio.wait_for(source.idle.wait(), 10)
        interpreter._on_player_state(speaking())  # ...the device starts to speak
        source.push(frames[len(frames) * 2 // 3:])
        await asyncio.wait_for(source.idle.wait(), 10)
        stop.set()
        await task

    asyncio.run(main())
    assert stream.chunks and stream.ended  # the aborted request stream was ended, not left open
    assert not sent(transport, TranscriptMessage, TOPICS.transcript) or all(
        m.state == "proceeding" for m in sent(transport, TranscriptMessage, TOPICS.transcript))




def test_an_unexpected_failure_drops_the_utterance_and_listening_goes_on(caplog):
    transport, source = MemoryTransport(), PushSource()
    backend = ScriptedBackend("ok", "날씨", "날씨 어때요")
    interpreter = Interpreter(transport, TOPICS, source, backend, InterpreterSettings(retry=QUICK))
    original = interpreter._on_vad
    calls = iter(range(10**6))

    async def flaky(event):
        if next(calls) < 3:
            raise ZeroDivisionError("a bug")
        await original(event)

    interpreter._on_vad = flaky
    asyncio.run(run_until_idle(interpreter, source, utterance() + utterance()))
    completed = [m for m in sent(transport, TranscriptMessage, TOPICS.transcript) if m.state == "completed"]
    assert completed and completed[-1].text == "날씨 어때요"  # the next utterance was heard
    assert "a frame could not be handled" in caplog.text


def test_a_reconnect_with_backoff_never_stalls_the_microphone_loop_and_replays_the_audio_in_order():
    """The stream drops after 10 chunks; the first reconnect is refused, the next one opens after a 0.5 s backoff.
    Meanwhile the microphone goes on (paced in real time, as a microphone is): no frame waits on the reconnect, and
    the new stream receives the whole utterance from its first chunk, in order."""
    import time

    first, second = FakeTranscribeStream(SCRIPT, fail_after_chunks=10), FakeTranscribeStream(SCRIPT)

    class RefusesOnce(FakeTranscribeClient):
        async def start_stream_transcription(self, **kwargs):
            self.requests.append(kwargs)
            if len(self.requests) == 2:
                raise ConnectionError("connection reset by peer")
            return self.streams[0 if len(self.requests) == 1 else 1]

    client = RefusesOnce([first, second])
    transport = MemoryTransport()
    retry = RetryPolicy(first_delay_s=0.5, max_delay_s=1.0, attempts=3, open_timeout_s=1.0, end_timeout_s=2.0)
    interpreter = Interpreter(transport, TOPICS, PushSource(), TranscribeBackend(client_factory=lambda: client),
                              InterpreterSettings(retry=retry))
    stalls: list[float] = []

    async def main() -> None:
        for frame in utterance():
            started = time.perf_counter()
            await interpreter.process(frame)
            stalls.append(time.perf_counter() - started)
            await asyncio.sleep(0.03)  # the next 30 ms frame arrives in real time
        await interpreter.drain()

    asyncio.run(main())
    assert len(client.requests) == 3 and second.ended  # refused once, then reconnected and finished there
    assert max(stalls) < 0.1, f"the microphone loop waited {max(stalls) * 1000:.0f} ms"
    assert second.chunks == first.chunks + second.chunks[len(first.chunks):]  # replayed from the start, in order
    assert len(second.chunks) > len(first.chunks)
    completed = [m for m in sent(transport, TranscriptMessage, TOPICS.transcript) if m.state == "completed"]
    assert [m.text for m in completed] == ["오늘 날씨 어때요"]
