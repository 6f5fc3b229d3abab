"""voice-interpreter on real audio (espeak-ng Korean), real webrtcvad, real Vosk and a real mosquitto; Amazon
Transcribe faked at the stream boundary with amazon_transcribe's own model objects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from amazon_transcribe.exceptions import ServiceUnavailableException
from amazon_transcribe.model import Alternative, Result, Transcript, TranscriptEvent

from tests.conftest import Recorder
from tests.speech_fixtures import frames_of, silence, spoken, write_wav
from voicebot.edge.audio import WavSource
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.stt import RetryPolicy, SttResult, TranscribeBackend
from voicebot.protocol import QOS_AT_MOST_ONCE, PlayerStateMessage, TranscriptMessage, decode, encode

UTTERANCES = ["오늘 날씨 어때요", "음악 좀 틀어 줘", "고마워요"]
FAST_RETRY = RetryPolicy(first_delay_s=0.0, attempts=3)


class RecordingBackend:
    """Wraps a real backend and records, per stream, how much audio reached it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = f"recording-{inner.name}"
        self.streams: list[int] = []  # bytes per stream

    async def open(self):
        session = await self.inner.open()
        index = len(self.streams)
        self.streams.append(0)
        backend = self

        class Session:
            async def send(self, pcm: bytes) -> None:
                backend.streams[index] += len(pcm)
                await session.send(pcm)

            async def finish(self) -> None:
                await session.finish()

            def results(self):
                return session.results()

            async def close(self) -> None:
                await session.close()

        return Session()


def test_each_utterance_yields_exactly_one_completed_and_silence_reaches_no_stt(tmp_path, connect, topics, vosk):
    pieces = [silence(1.0)]
    for text in UTTERANCES:
        pieces += [spoken(text), silence(2.0)]
    wav = write_wav(tmp_path / "three.wav", *pieces)
    recorder = Recorder()
    connect("observer").subscribe(topics.transcript, 1, recorder)
    backend = RecordingBackend(vosk)
    source = WavSource(wav)
    settings = InterpreterSettings()
    interpreter = Interpreter(connect("interpreter"), topics, source, backend, settings)
    asyncio.run(interpreter.run(asyncio.Event()))  # a WAV source ends the run once every message is sent

    messages = [decode(TranscriptMessage, p) for p in recorder.wait_for(
        lambda ms: sum(b'"completed"' in p for _, p in ms) == 3, 30) and recorder.on(topics.transcript)]
    completed = [m for m in messages if m.state == "completed"]
    assert len(completed) == 3
    assert len({m.request_id for m in completed}) == 3
    assert all(m.text.strip() and m.speech_end_ts for m in completed)
    for c in completed:  # partials (if any) come before their completed, never after
        order = [m.state for m in messages if m.request_id == c.request_id]
        assert order[-1] == "completed" and order.count("completed") == 1
    # One STT stream per utterance, each holding only that utterance plus pre-roll and hangover.
    assert len(backend.streams) == 3
    vad = settings.vad
    for text, sent in zip(UTTERANCES, backend.streams, strict=True):
        seconds = sent / 2 / 16_000
        assert seconds <= len(spoken(text)) / 16_000 + (vad.preroll_ms + vad.hangover_ms) / 1000 + 0.2
    # Of the 7 s of silence, at most pre-roll + hangover around each utterance reached the STT.
    guard = len(UTTERANCES) * (vad.preroll_ms + vad.hangover_ms) / 1000
    assert sum(backend.streams) / 2 / 16_000 <= source.seconds - (7.0 - guard) + 0.2


# --------------------------------------------------------------------------------------------------------------------
# Amazon Transcribe at the stream boundary
# --------------------------------------------------------------------------------------------------------------------


def event(text: str, *, partial: bool, result_id: str = "r1") -> TranscriptEvent:
    alt = Alternative(transcript=text, items=[])
    return TranscriptEvent(transcript=Transcript(results=[Result(result_id=result_id, is_partial=partial,
                                                                 alternatives=[alt])]))


class FakeTranscribeStream:
    """What ``start_stream_transcription`` returns: an input stream we record and an output stream of events."""

    def __init__(self, script: list[TranscriptEvent], *, fail_after_chunks: int | None = None) -> None:
        self.script = script
        self.fail_after_chunks = fail_after_chunks
        self.chunks: list[bytes] = []
        self.ended = False
        self._events: asyncio.Queue = asyncio.Queue()
        self.input_stream = self
        self.output_stream = self._output()

    async def send_audio_event(self, audio_chunk: bytes) -> None:
        self.chunks.append(audio_chunk)
        if len(self.chunks) == 3:
            await self._events.put(self.script[0])  # a partial while the person speaks
        if self.fail_after_chunks is not None and len(self.chunks) >= self.fail_after_chunks:
            await self._events.put(ServiceUnavailableException("Service unavailable"))

    async def end_stream(self) -> None:
        self.ended = True
        for e in self.script[1:]:
            await self._events.put(e)
        await self._events.put(None)

    async def _output(self) -> AsyncIterator[TranscriptEvent]:
        while (item := await self._events.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item


class FakeTranscribeClient:
    def __init__(self, streams: list[FakeTranscribeStream]) -> None:
        self.streams = streams
        self.requests: list[dict] = []

    async def start_stream_transcription(self, **kwargs) -> FakeTranscribeStream:
        self.requests.append(kwargs)
        return self.streams[len(self.requests) - 1]


SCRIPT = [event("오늘", partial=True), event("오늘 날씨", partial=False, result_id="a"),
          event("어때요", partial=False, result_id="b")]


def run_one_utterance(tmp_path, connect, topics, client) -> tuple[Interpreter, list[TranscriptMessage]]:
    wav = write_wav(tmp_path / "one.wav", silence(0.5), spoken(UTTERANCES[0]), silence(1.5))
    recorder = Recorder()
    connect("observer").subscribe(topics.transcript, 1, recorder)
    backend = TranscribeBackend(region="ap-northeast-2", client_factory=lambda: client)
    interpreter = Interpreter(connect("interpreter"), topics, WavSource(wav), backend,
                              InterpreterSettings(retry=FAST_RETRY, max_partials_per_s=1000))
    asyncio.run(interpreter.run(asyncio.Event()))
    recorder.wait_for(lambda ms: any(b'"completed"' in p for _, p in ms), 10)
    return interpreter, [decode(TranscriptMessage, p) for p in recorder.on(topics.transcript)]


def test_transcribe_partial_then_two_finals_make_one_completed(tmp_path, connect, topics):
    stream = FakeTranscribeStream(SCRIPT)
    client = FakeTranscribeClient([stream])
    _, messages = run_one_utterance(tmp_path, connect, topics, client)
    # the finals arrive after the end of speech: they go into the completed message, not into more partials
    assert [(m.state, m.text) for m in messages] == [("proceeding", "오늘"), ("completed", "오늘 날씨 어때요")]
    assert client.requests == [dict(language_code="ko-KR", media_sample_rate_hz=16000, media_encoding="pcm",
                                    enable_partial_results_stabilization=True, partial_results_stability="high")]
    assert stream.ended and all(len(c) == 960 for c in stream.chunks)


def test_transcribe_stream_error_mid_utterance_reconnects_and_replays(tmp_path, connect, topics):
    broken = FakeTranscribeStream(SCRIPT, fail_after_chunks=12)
    healthy = FakeTranscribeStream(SCRIPT)
    client = FakeTranscribeClient([broken, healthy])
    _, messages = run_one_utterance(tmp_path, connect, topics, client)
    completed = [m for m in messages if m.state == "completed"]
    assert [m.text for m in completed] == ["오늘 날씨 어때요"]
    assert len(client.requests) == 2
    # the new stream got the whole utterance again, from its first (pre-roll) frame
    assert len(broken.chunks) >= 12 and healthy.chunks[: len(broken.chunks)] == broken.chunks
    assert len(healthy.chunks) > len(broken.chunks) and healthy.ended


# --------------------------------------------------------------------------------------------------------------------
# Half duplex
# --------------------------------------------------------------------------------------------------------------------


class PushSource:
    """Frames pushed by the test; ``idle`` is set whenever every pushed frame has been processed."""

    description = "test frames"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.idle = asyncio.Event()

    def push(self, frames: list[bytes]) -> None:
        self.idle.clear()
        for f in frames:
            self.queue.put_nowait(f)

    async def frames(self):
        while True:
            if self.queue.empty():
                self.idle.set()  # the interpreter asked for more: everything before has been processed
            yield await self.queue.get()


def test_half_duplex_no_transcript_while_speaking_then_after_idle_and_tail(connect, topics, vosk):
    now = [100.0]
    utterance = frames_of(silence(0.3)) + frames_of(spoken("음악 좀 틀어 줘")) + frames_of(silence(1.2))
    recorder = Recorder()
    connect("observer").subscribe(topics.transcript, 1, recorder)
    player = connect("player")

    async def main() -> None:
        source = PushSource()
        interpreter = Interpreter(connect("interpreter"), topics, source, vosk, InterpreterSettings(echo_tail_s=0.4),
                                  clock=lambda: now[0])
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))

        async def player_says(state: str) -> None:
            interpreter.state_changed.clear()
            player.publish(topics.player_state, encode(PlayerStateMessage(state=state, request_id="r")),
                           QOS_AT_MOST_ONCE).result(5)
            await asyncio.wait_for(interpreter.state_changed.wait(), 10)

        await asyncio.wait_for(source.idle.wait(), 10)
        await player_says("speaking")
        source.push(utterance)
        await asyncio.wait_for(source.idle.wait(), 30)
        assert not interpreter.published  # heard nothing while the device spoke

        await player_says("idle")
        source.push(utterance)  # still inside the 0.4 s tail: the room may still ring
        await asyncio.wait_for(source.idle.wait(), 30)
        assert not interpreter.published

        now[0] += 0.5  # the tail has passed
        source.push(utterance)
        await asyncio.wait_for(source.idle.wait(), 30)
        await interpreter.drain()
        stop.set()
        await task
        assert [m.state for m in interpreter.published][-1] == "completed"
        assert len([m for m in interpreter.published if m.state == "completed"]) == 1

    asyncio.run(main())
    completed = [json.loads(p) for p in recorder.wait_for(
        lambda ms: any(b'"completed"' in p for _, p in ms), 10) and recorder.on(topics.transcript)
        if json.loads(p)["state"] == "completed"]
    assert len(completed) == 1


def test_stop_word_while_speaking_cancels_the_answer(connect, topics):
    class StopWordStt:
        name = "scripted"

        async def open(self):
            class Session:
                async def send(self, pcm): ...
                async def finish(self): ...

                async def results(self):
                    yield SttResult("그만", True)

                async def close(self): ...

            return Session()

    control = Recorder()
    connect("observer").subscribe(topics.control, 0, control)
    player = connect("player")

    async def main() -> None:
        source = PushSource()
        interpreter = Interpreter(connect("interpreter"), topics, source, StopWordStt(),
                                  InterpreterSettings(stop_word_enabled=True))
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(source.idle.wait(), 10)
        player.publish(topics.player_state, encode(PlayerStateMessage(state="speaking", request_id="answer-1")),
                       QOS_AT_MOST_ONCE).result(5)
        await asyncio.wait_for(interpreter.state_changed.wait(), 10)
        source.push(frames_of(spoken("그만")) + frames_of(silence(1.0)))
        await asyncio.wait_for(source.idle.wait(), 30)
        await interpreter.drain()
        stop.set()
        await task
        assert not interpreter.published  # the stop word is not a question

    asyncio.run(main())
    messages = [json.loads(p) for p in control.wait_for(lambda ms: len(ms) >= 1, 10) and control.on(topics.control)]
    assert messages[0]["action"] == "cancel" and messages[0]["requestId"] == "answer-1"


def test_live_configuration_changes_vad_tail_and_stop_word(topics, connect, vosk):
    interpreter = Interpreter(connect("interpreter"), topics, PushSource(), vosk)
    old_vad = interpreter.vad
    interpreter.apply_config({"HangoverMs": "900", "VadAggressiveness": "3", "EchoTailS": "0.2", "StopWord": "멈춰",
                              "PrerollMs": "oops", "PreemptMs": "90", "QuietMarginDb": "6"})
    s = interpreter.settings
    assert s.vad.hangover_ms == 900 and s.vad.aggressiveness == 3 and s.vad.preroll_ms == 300  # bad value: kept
    assert s.vad.preempt_ms == 90 and s.vad.quiet_margin_db == 6
    assert s.echo_tail_s == 0.2 == interpreter.echo_guard.echo_tail_s and s.stop_word_enabled and s.stop_word == "멈춰"
    assert interpreter.vad is not old_vad and interpreter.vad.settings == s.vad  # between utterances: at once
    interpreter.apply_config({"StopWord": ""})
    assert not interpreter.settings.stop_word_enabled


def test_a_wrong_audio_device_is_named_with_the_choices():
    from voicebot.edge.audio import AudioError, open_sink, open_source

    for opener, spec, kind in ((open_source, "mic:no-such-mic", "input"), (open_sink, "device:no-such-speaker", "output")):
        with pytest.raises(AudioError, match=f"no {kind} device 'no-such-(mic|speaker)'; available: "):
            opener(spec)


def test_wav_source_resamples_any_rate_and_channels_to_16k_mono_frames(tmp_path):
    import numpy as np
    import soundfile as sf

    t = np.arange(44_100 * 3) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44_100)
    source = WavSource(path, frame_ms=20)

    async def collect() -> list[bytes]:
        return [f async for f in source.frames()]

    frames = asyncio.run(collect())
    assert source.seconds == 3.0
    assert all(len(f) == 640 for f in frames) and abs(len(frames) - 150) <= 1
    pcm = np.frombuffer(b"".join(frames), dtype="<i2")
    spectrum = np.abs(np.fft.rfft(pcm[16_000:32_000]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # still a 440 Hz tone after resampling


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_both_vad_engines_find_the_utterance_and_nothing_in_silence(engine):
    from voicebot.edge.vad import SpeechEnded, SpeechStarted, VadGate, VadSettings

    gate = VadGate(VadSettings(engine=engine))
    frames = frames_of(silence(1.0)) + frames_of(spoken("오늘 날씨 어때요")) + frames_of(silence(1.5))
    events = [e for f in frames for e in gate.process(f)] + gate.flush()
    starts = [i for i, e in enumerate(events) if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(starts) == 1 and len(ends) == 1 and ends[0].reason == "silence"
    assert len(events[starts[0]].preroll) == 10  # 300 ms of pre-roll


def test_an_unusable_vad_setting_keeps_the_running_vad(topics, connect, vosk, monkeypatch, caplog):
    import voicebot.edge.vad as vad_module

    def missing(*_a, **_k):
        raise RuntimeError("the silero VAD needs `pip install 'voicebot[silero]'`")

    interpreter = Interpreter(connect("interpreter"), topics, PushSource(), vosk)
    running = interpreter.vad
    monkeypatch.setattr(vad_module, "silero_classifier", missing)
    interpreter.apply_config({"VadEngine": "silero"})
    assert interpreter.vad is running and interpreter.settings.vad.engine == "webrtc"
    assert "not applied" in caplog.text


def test_open_stt_names_the_choices():
    from voicebot.edge.stt import NullSttBackend, SttError, TranscribeBackend, open_stt

    assert isinstance(open_stt("none"), NullSttBackend)
    assert open_stt("transcribe", region="us-west-2").region == "us-west-2"
    assert isinstance(open_stt("transcribe"), TranscribeBackend)
    with pytest.raises(SttError, match="vosk, transcribe or none"):
        open_stt("whisper")
