"""Preemption is correct before it is fast: a question said with a pause after a finished-sounding clause ("네
알겠어요. | 그런데 내일은 어때요?"), fed in real time to the real interpreter and player on the local stack. The early
answer may be written, but nothing of it is heard; the person hears exactly one complete answer, to the whole
question. Pauses 0.3-0.6 s, models with 0 and 600 ms to the first token, a Transcribe-like scripted recognizer and
Vosk."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.conftest import Recorder
from tests.speech_fixtures import frames_of, silence, spoken
from voicebot.bench import bargein
from voicebot.bench.room import RoomSettings
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import EspeakTts
from voicebot.edge.audio import NullSink
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.player import Player
from voicebot.edge.stt import SttResult
from voicebot.edge.vad import VadSettings
from voicebot.local.cloud import LocalCloud
from voicebot.protocol import TranscriptMessage, decode

pytestmark = pytest.mark.slow  # real time: a few seconds per case

FIRST, SECOND = "네 알겠어요", "그런데 내일은 어때요"
PREROLL = VadSettings().frames(VadSettings().preroll_ms)


class Script:
    """What was said and when: each word with the frame its sound ends at, and how many frames the microphone has
    delivered (the scripted recognizer's ground truth)."""

    def __init__(self, clauses: list[tuple[str, int, int]]) -> None:
        self.words: list[tuple[str, int]] = []
        for text, first, last in clauses:  # (words, first frame, frame after the last)
            words = text.split()
            self.words += [(w, first + round((i + 1) * (last - first) / len(words))) for i, w in enumerate(words)]
        self.delivered = 0

    def said(self, since: int, until: int) -> str:
        return " ".join(w for w, end in self.words if since < end <= until)


class Microphone:
    """The frames as a microphone delivers them: one every 30 ms, in a quiet room (about -60 dBFS)."""

    description = "test microphone"

    def __init__(self, frames: list[bytes], script: Script) -> None:
        rng = np.random.default_rng(3)
        self._frames = [np.clip(np.frombuffer(f, "<i2") + rng.normal(0, 33, 480), -32768, 32767).astype("<i2")
                        .tobytes() for f in frames]
        self.script = script

    async def frames(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for frame in self._frames:
            next_at += 0.03
            await asyncio.sleep(max(0.0, next_at - loop.time()))  # real time: the point of this test
            self.script.delivered += 1
            yield frame


class TranscribeLike:
    """Shows the words whose sound it has received, a partial every 150 ms (repeated, as Transcribe does), the final
    result 300 ms after the audio ends. Each stream hears from its pre-roll on."""

    name = "scripted-transcribe"

    def __init__(self, script: Script, lag_s: float = 0.0) -> None:
        self.script = script
        self.lag_s = lag_s  # each partial this much later still (a recognizer slow to show the words)

    async def open(self) -> Session:
        return Session(self.script, self.lag_s)


class Session:
    def __init__(self, script: Script, lag_s: float = 0.0) -> None:
        self.script = script
        self.lag_s = lag_s
        self.since = max(0, script.delivered - PREROLL - VadSettings().frames(VadSettings().start_ms))
        self.heard_until = self.since
        self.opened_at = script.delivered
        self.burst = 0  # frames sent at once when the stream opened (the pre-roll, or a barge-in's buffer)
        self.queue: asyncio.Queue[SttResult | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.ticker = self.loop.call_later(0.15, self._tick)

    def _tick(self) -> None:
        if text := self.script.said(self.since, self.heard_until):
            self.loop.call_later(self.lag_s, self.queue.put_nowait, SttResult(text, final=False))
        self.ticker = self.loop.call_later(0.15, self._tick)

    async def send(self, pcm: bytes) -> None:
        if self.script.delivered == self.opened_at:  # the audio handed over on opening: it starts this far back
            self.burst += 1
            self.since = max(0, self.opened_at - self.burst)
        self.heard_until = self.script.delivered

    async def finish(self) -> None:
        self.ticker.cancel()
        text = self.script.said(self.since, self.heard_until)
        self.loop.call_later(0.3, self.queue.put_nowait, SttResult(text, final=True))
        self.loop.call_later(0.3, self.queue.put_nowait, None)

    async def results(self) -> AsyncIterator[SttResult]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def close(self) -> None:
        self.ticker.cancel()


def trimmed(text: str) -> list[bytes]:
    """espeak-ng's speech without its own leading and trailing silence: the pause is exactly the one asked for."""
    samples = spoken(text)
    voiced = np.nonzero(np.abs(samples) > 0.01)[0]
    return frames_of(samples[voiced[0]: voiced[-1] + 1])


def question(pause_s: float) -> tuple[list[bytes], Script]:
    first, second = trimmed(FIRST), trimmed(SECOND)
    lead, gap = frames_of(silence(1.0)), frames_of(silence(pause_s))
    a = len(lead)
    b = a + len(first) + len(gap)
    script = Script([(FIRST, a, a + len(first)), (SECOND, b, b + len(second))])
    return lead + first + gap + second + frames_of(silence(2.0)), script


def warm_up(interpreter: Interpreter) -> None:
    """The device has spoken in this room before, as any device has but in its first second: its echo canceller
    knows the room (here: the microphone does not hear the speaker at all). A canceller still learning it takes a
    person's voice down with the echo it fears; README "Full duplex" gives that first second's figures."""
    # (long over: the interpreter is half-duplex until the next answer)
    bargein.warm_up(interpreter.aec, RoomSettings(attenuation_db=120.0), 1.0, start_s=time.monotonic() - 30.0)


def converse(broker, connect, topics, tmp_path, recognizer, frames, script: Script, ttft_s: float, *,
             warm: bool = False) -> Recorder:
    observer = Recorder()
    connect("observer").subscribe(f"{topics.root}/#", 1, observer)
    model = LoopbackChatModel(first_token_delay_s=ttft_s)

    async def main() -> None:
        stop = asyncio.Event()
        player = Player(connect("player"), topics, NullSink())  # plays in real time, as a speaker does
        interpreter = Interpreter(connect("interpreter"), topics, Microphone(frames, script), recognizer,
                                  InterpreterSettings(vad=VadSettings(quiet_margin_db=10.0)))
        if warm:
            warm_up(interpreter)
        tasks = [asyncio.create_task(player.run(stop))]
        await asyncio.wait_for(player.ready.wait(), 10)
        listening = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(listening, 60)  # the microphone's frames end: every transcript went out
        transcripts = [decode(TranscriptMessage, p) for t, p in observer.messages if t == topics.transcript]
        last = [m for m in transcripts if m.state == "completed"][-1]
        await asyncio.to_thread(observer.wait_for, lambda ms: any(
            t == topics.event and b'"played"' in p and last.request_id.encode() in p and b'"seq"' not in p
            for t, p in ms), 60)
        stop.set()
        await asyncio.gather(*tasks)

    with LocalCloud(broker.url, model=model, history=SqliteHistory(tmp_path / "h.sqlite"), tts=EspeakTts(),
                    topic_root=topics.root):
        asyncio.run(main())
    return observer


def heard(observer: Recorder, topics) -> tuple[list[TranscriptMessage], set[str], set[str]]:
    done = [m for t, p in observer.messages if t == topics.transcript
            for m in [decode(TranscriptMessage, p)] if m.state == "completed"]
    events = [json.loads(p) for t, p in observer.messages if t == topics.event]
    playing = {e["requestId"] for e in events if e["type"] == "playing" and e.get("source") == "player"}
    finished = {e["requestId"] for e in events if e["type"] == "played" and "seq" not in e}
    return done, playing, finished


@pytest.mark.parametrize("ttft_s", [0.0, 0.6])
@pytest.mark.parametrize("pause_s", [0.3, 0.45, 0.6])
def test_a_pause_after_a_finished_clause_gives_one_answer_to_the_whole_question(pause_s, ttft_s, broker, connect,
                                                                                 topics, tmp_path):
    frames, script = question(pause_s)
    observer = converse(broker, connect, topics, tmp_path, TranscribeLike(script), frames, script, ttft_s)
    done, playing, finished = heard(observer, topics)
    whole = done[-1]
    assert whole.text == f"{FIRST} {SECOND}"  # every word, once
    assert playing == {whole.request_id} and whole.request_id in finished  # one answer heard, complete
    early = done[:-1]
    assert all(m.request_id not in playing for m in early)  # nothing of an early answer
    if early:  # the whole question replaces the early one, exactly once
        assert whole.replaces == early[-1].request_id and len({m.replaces for m in done if m.replaces}) == len(early)


@pytest.mark.parametrize("pause_s", [0.3, 0.6])
def test_a_lagging_recognizer_and_the_audio_model_still_give_one_answer_to_the_whole_question(pause_s, broker,
                                                                                              connect, topics,
                                                                                              tmp_path):
    """Partials 800 ms late: the audio turn model (the default, both) ends each utterance long before the words are
    shown; the early request goes out from the final result or the late words, is held, and is withdrawn when the
    person goes on."""
    frames, script = question(pause_s)
    observer = converse(broker, connect, topics, tmp_path, TranscribeLike(script, lag_s=0.8), frames, script, 0.6)
    done, playing, finished = heard(observer, topics)
    whole = done[-1]
    assert whole.text.rstrip("?") == f"{FIRST} {SECOND}"
    assert playing == {whole.request_id} and whole.request_id in finished


@pytest.mark.parametrize("pause_s", [0.3, 0.6])
def test_with_vosk_only_one_answer_is_heard(pause_s, broker, connect, topics, tmp_path, vosk):
    frames, script = question(pause_s)
    observer = converse(broker, connect, topics, tmp_path, vosk, frames, script, 0.0)
    done, playing, finished = heard(observer, topics)
    assert done and playing == {done[-1].request_id} and done[-1].request_id in finished


@pytest.mark.parametrize("pause_s", [0.75, 0.9, 1.3])
def test_going_on_over_an_early_answer_barges_in_and_asks_the_whole_question(pause_s, broker, connect, topics, tmp_path):
    """A pause longer than the hangover (1.3 s): the turn ends, the answer to the first clause starts playing; the
    person goes on over it. Full duplex (the player's far end reaches the interpreter): the answer stops at once, and
    the rest completes the question, asked again whole with ``replaces``; nothing of the question is lost. At 0.75 and
    0.9 s the answer starts just before or just after the person goes on (as the machine's load has it): the same,
    and the start of the answer cuts nothing of the question (the player says "speaking" before its far end comes)."""
    frames, script = question(pause_s)
    observer = converse(broker, connect, topics, tmp_path, TranscribeLike(script), frames, script, 0.0, warm=True)
    done, playing, finished = heard(observer, topics)
    events = [json.loads(p) for t, p in observer.messages if t == topics.event]
    whole = done[-1]
    assert whole.text.rstrip("?") == f"{FIRST} {SECOND}"  # nothing lost
    first = [m for m in done if m.text.rstrip(".") == FIRST]
    assert first and whole.replaces == first[-1].request_id  # the early question, replaced once
    assert first[-1].request_id not in finished and whole.request_id in finished  # cut; the whole one played
    if pause_s > 1.0:
        assert any(e["type"] == "barge_in" for e in events) and first[-1].request_id in playing  # it was playing
