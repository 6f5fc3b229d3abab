"""Korean-aware end of turn and preemptive transcripts: a finished-sounding sentence ends the turn after a short
silence and its transcript goes out at once; a pause after a connective ending is not cut off; a person who goes
on after an early end gets one answer to the whole question, and nothing of the early answer plays."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import Recorder
from tests.speech_fixtures import frames_of, in_room, silence, spoken
from tests.test_interpreter import PushSource
from tests.test_interpreter_faults import QUICK, ScriptedBackend, ScriptedSession
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import EspeakTts
from voicebot.edge.audio import NullSink
from voicebot.edge.endpointing import looks_finished
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.player import Player
from voicebot.edge.stt import SttResult
from voicebot.edge.vad import VadSettings
from voicebot.local.cloud import LocalCloud
from voicebot.messaging import MemoryTransport
from voicebot.protocol import ControlMessage, PlayerStateMessage, Topics, TranscriptMessage, decode, encode


class SpokenSource(PushSource):
    """Pushed frames, handed over one loop turn apart, as a microphone delivers them: the recognizer's partial
    results arrive while the person is still speaking, not after the whole file."""

    async def frames(self):
        async for frame in super().frames():
            yield frame
            await asyncio.sleep(0)  # one turn of the loop per frame (not a pause: no time passes)


class Sessions:
    """A recognizer that hears, utterance after utterance, the given words (partial and final alike)."""

    name = "scripted"

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.opened = 0

    async def open(self) -> ScriptedSession:
        text = self.texts[min(self.opened, len(self.texts) - 1)]
        self.opened += 1
        return ScriptedSession(text, text)


class WordsSession(ScriptedSession):
    """One utterance whose words are revealed as its audio arrives: ``partials`` maps a frame count to the words
    heard by then; the final result is the last of them."""

    def __init__(self, partials: dict[int, str]) -> None:
        super().__init__("", list(partials.values())[-1])
        self.partials = partials

    async def send(self, pcm: bytes) -> None:
        self.sent += 1
        if self.sent in self.partials:
            await self.results_queue.put(SttResult(self.partials[self.sent], final=False))


class OneUtterance:
    name = "scripted"

    def __init__(self, partials: dict[int, str]) -> None:
        self.partials = partials

    async def open(self) -> WordsSession:
        return WordsSession(self.partials)


PREROLL = VadSettings().frames(VadSettings().preroll_ms)  # frames of silence a recognizer hears before the speech
#: These tests push frames faster than real time, and the audio turn model answers from a thread in real time: its
#: verdict would land at an arbitrary frame. The text cue alone is deterministic here; the model's part is tested in
#: test_turn_detector (pure) and in real time (test_preemption, the default).
TEXT = VadSettings(end_of_turn="text")


@pytest.mark.parametrize(("text", "finished"), [
    ("오늘 날씨 어때요", True), ("불 꺼 줘", True), ("몇 시야?", True), ("알려 주세요", True),
    ("오늘 날씨가 좋은데", False), ("그리고", False), ("서울 날씨는", False), ("먹었고", False), ("음", False),
    ("뭐야", True), ("몇 시야", True), ("내일 갈 거야", True), ("우산을 챙겨야", False), ("일찍 가야", False),
    # 아/어 forms waiting for their auxiliary ("음악 좀 틀어 | 줄래?"), and a turn that has only just opened
    ("음악 좀 틀어", False), ("그 노래 찾아", False), ("책 읽어", False), ("아니", False), ("아니.", False),
    ("아니요", True), ("날씨 좋아", True), ("먹고 싶어", True), ("시간 있어", True), ("음악 좀 틀어 줄래", True),
])
def test_finished_sounding_korean(text, finished):
    assert looks_finished(text) is finished


def run(backend, frames, topics, *, watch=None, **settings) -> MemoryTransport:
    """``frames`` through an interpreter; ``watch(interpreter, message)`` sees each transcript as it goes out."""
    transport, source = MemoryTransport(), SpokenSource()
    settings.setdefault("vad", TEXT)
    interpreter = Interpreter(transport, topics, source, backend, InterpreterSettings(retry=QUICK, **settings),
                              on_transcript=watch and (lambda message: watch(interpreter, message)))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(source.idle.wait(), 10)
        source.push(frames)
        await asyncio.wait_for(source.idle.wait(), 30)
        await interpreter.drain()
        stop.set()
        await task

    asyncio.run(main())
    return transport


def completed(transport: MemoryTransport, topics: Topics) -> list[TranscriptMessage]:
    return [m for t, p in transport.sent if t == topics.transcript
            for m in [decode(TranscriptMessage, p)] if m.state == "completed"]


def cancels(sent, topics: Topics) -> list[ControlMessage]:
    """The withdrawals among the control messages (each completed transcript also tells the player to expect an
    answer)."""
    controls = [decode(ControlMessage, p) for t, p in sent if t == topics.control]
    return [c for c in controls if c.action == "cancel"]


def test_a_pause_after_a_connective_ending_is_not_cut_off(topics):
    frames = (frames_of(silence(0.3)) + frames_of(spoken("오늘 날씨가 좋은데")) + frames_of(silence(0.45))
              + frames_of(spoken("산책 갈까요")) + frames_of(silence(1.0)))
    transport = run(Sessions("오늘 날씨가 좋은데"), frames, topics)
    assert len(completed(transport, topics)) == 1  # 450 ms after "좋은데" did not end the turn
    assert not cancels(transport.sent, topics)  # and no early answer was started


def test_a_final_result_that_only_adds_punctuation_asks_nothing_again(topics):
    frames = frames_of(silence(0.3)) + frames_of(spoken("오늘 날씨 어때요")) + frames_of(silence(1.0))
    transport = run(ScriptedBackend("scripted", "오늘 날씨 어때요", "오늘 날씨 어때요?"), frames, topics)
    assert [m.text for m in completed(transport, topics)] == ["오늘 날씨 어때요"]  # the early one stands
    transport = run(ScriptedBackend("scripted", "오늘 날씨 어때요", "오늘 날씨 어때서요"), frames, topics)
    early, corrected = completed(transport, topics)  # other words: asked again, as a newer request replacing it
    assert corrected.text == "오늘 날씨 어때서요" and corrected.replaces == early.request_id


def test_the_transcript_goes_out_before_the_turn_has_ended(topics):
    """Finished-sounding words and ``preempt_ms`` of silence: the transcript leaves while the VAD still waits for
    the early end, so the model writes during the rest of the wait."""
    speech = frames_of(spoken("오늘 날씨 어때요"))
    frames = frames_of(silence(0.3)) + speech + frames_of(silence(1.0))
    seen: list[tuple[str, bool, int, int]] = []
    transport = run(OneUtterance({len(speech): "오늘 날씨 어때요"}), frames, topics, watch=lambda interpreter, m:
                    seen.append((m.state, interpreter.vad.in_speech, interpreter.vad.silent_ms,
                                 interpreter.vad.quiet_ms)))
    done = [(in_speech, silent, quiet) for state, in_speech, silent, quiet in seen if state == "completed"]
    settings = VadSettings()
    assert len(done) == 1  # the final result said the same: nothing more
    in_speech, silent, quiet = done[0]
    assert in_speech and settings.preempt_ms <= max(silent, quiet) and silent < settings.early_end_ms
    assert not cancels(transport.sent, topics)


@pytest.mark.parametrize("quiet_margin_db", [10.0, 0.0])
def test_the_silence_before_a_preemptive_transcript_starts_when_the_voice_stops(topics, quiet_margin_db):
    """webrtcvad goes on calling the room "speech" for ~90 ms after a voice stops. The preemptive transcript counts
    its silence from the voice's end (frames back at the room's noise floor), and webrtcvad's afterglow does not
    count as the person going on; with the quiet margin off, it waits for webrtcvad."""
    samples = spoken("오늘 날씨 어때요")
    samples = samples[: np.nonzero(np.abs(samples) > 0.01)[0][-1] + 1]  # up to its last voiced sample
    voice = frames_of(in_room(np.concatenate([samples, silence(0.03)]), seed=1))  # (the last frame: part voice)
    frames = frames_of(in_room(silence(1.0), seed=2)) + voice + frames_of(in_room(silence(1.0), seed=3))
    settings = VadSettings(quiet_margin_db=quiet_margin_db)
    # The recognizer shows the words with the voice's last frame, and again with every frame after it, as Vosk and
    # Transcribe repeat their latest partial: the pre-roll holds the start frames and what was before them; frames
    # are counted as the recognizer gets them.
    last = PREROLL - settings.frames(settings.start_ms) + len(voice)
    went_out: list[tuple[int, int, int]] = []
    transport = run(OneUtterance({n: "오늘 날씨 어때요" for n in range(last, last + 40)}), frames, topics, vad=settings,
                    watch=lambda interpreter, m: m.state == "completed" and went_out.append(
                        (interpreter.frames_seen, interpreter.vad.silent_ms, interpreter.vad.quiet_ms)))
    assert len(went_out) == 1 and not cancels(transport.sent, topics)  # never withdrawn
    frame, silent, quiet = went_out[0]
    after_voice_ms = (frame - len(frames_of(silence(1.0))) - len(voice)) * settings.frame_ms
    if quiet_margin_db:
        assert silent < settings.preempt_ms <= quiet  # webrtcvad still said "speech"
        assert after_voice_ms == settings.preempt_ms
    else:
        assert silent == settings.preempt_ms and after_voice_ms > settings.preempt_ms


def test_a_finished_sentence_ends_the_turn_after_a_short_silence(topics):
    frames = (frames_of(silence(0.3)) + frames_of(spoken("오늘 날씨 어때요")) + frames_of(silence(0.45))
              + frames_of(spoken("산책 갈까요")) + frames_of(silence(1.0)))
    # early end off: the 450 ms pause is inside the 700 ms hangover, one turn
    assert len(completed(run(Sessions("오늘 날씨 어때요"), frames, topics, vad=replace(TEXT, early_end_ms=0)),
                         topics)) == 1
    # on: "어때요" + 250 ms ends the turn; the second sentence starts another
    assert len(completed(run(Sessions("오늘 날씨 어때요", "산책 갈까요"), frames, topics), topics)) == 2


FIRST, SECOND = frames_of(spoken("오늘 날씨 어때요")), frames_of(spoken("서울 말고 부산"))  # each ends in 180 ms of silence


@pytest.mark.parametrize("pause", [
    0.0,  # 180 ms: the transcript went out (preempt_ms), the turn had not ended: it is withdrawn
    0.45,  # 630 ms: the turn had ended early (early_end_ms), the next words continue it
])
def test_going_on_after_an_early_transcript_cancels_its_answer_and_asks_the_whole_question(pause, broker, connect,
                                                                                          topics, tmp_path):
    frames = frames_of(silence(0.3)) + FIRST + frames_of(silence(pause)) + SECOND + frames_of(silence(1.0))
    if pause:  # two utterances
        recognizer = Sessions("오늘 날씨 어때요", "서울 말고 부산")
    else:  # one utterance, its words revealed as they are said
        recognizer = OneUtterance({len(FIRST): "오늘 날씨 어때요",
                                   PREROLL + len(FIRST) + 5: "오늘 날씨 어때요 서울 말고 부산"})
    observer = Recorder()
    connect("observer").subscribe(f"{topics.root}/#", 1, observer)
    slow_model = LoopbackChatModel(first_token_delay_s=1.0)  # the early answer is still being written meanwhile

    async def main() -> Player:
        source, stop = SpokenSource(), asyncio.Event()
        player = Player(connect("player"), topics, NullSink(realtime=False))
        interpreter = Interpreter(connect("interpreter"), topics, source, recognizer,
                                  InterpreterSettings(retry=QUICK, echo_tail_s=0.0, vad=TEXT))  # frames go faster than time
        tasks = [asyncio.create_task(player.run(stop)), asyncio.create_task(interpreter.run(stop))]
        await asyncio.wait_for(player.ready.wait(), 10)
        await asyncio.wait_for(source.idle.wait(), 10)
        await asyncio.wait_for(interpreter.state_changed.wait(), 10)  # it has heard the player is idle
        source.push(frames)
        await asyncio.wait_for(source.idle.wait(), 30)
        await interpreter.drain()
        await asyncio.to_thread(observer.wait_for, lambda ms: sum(
            t == topics.transcript and b'"completed"' in p for t, p in ms) >= 2, 30)
        transcripts = [decode(TranscriptMessage, p) for t, p in observer.messages if t == topics.transcript]
        final = [m for m in transcripts if m.state == "completed"][-1]
        await asyncio.to_thread(observer.wait_for, lambda ms: any(
            t == topics.event and b'"played"' in p and final.request_id.encode() in p and b'"seq"' not in p
            for t, p in ms), 60)
        stop.set()
        await asyncio.gather(*tasks)
        return player

    with LocalCloud(broker.url, model=slow_model, history=SqliteHistory(tmp_path / "h.sqlite"), tts=EspeakTts(),
                    topic_root=topics.root):
        asyncio.run(main())

    done = [decode(TranscriptMessage, p) for t, p in observer.messages if t == topics.transcript]
    early, whole = [m for m in done if m.state == "completed"]
    assert early.text == "오늘 날씨 어때요" and whole.text == "오늘 날씨 어때요 서울 말고 부산"
    assert whole.replaces == early.request_id  # (the chat removes the early turn from the history)
    assert [c.request_id for c in cancels(observer.messages, topics)] == [early.request_id]
    played = [json.loads(p) for t, p in observer.messages if t == topics.event and b'"playing"' in p]
    assert played and all(e["requestId"] == whole.request_id for e in played)  # nothing of the early answer


def test_speech_after_the_early_answer_was_heard_is_a_new_question(topics):
    """Within 2 s of an early end, but the answer has started playing meanwhile: the person is not going on with
    the first question, they are asking the next one (nothing cancelled, nothing prefixed)."""
    transport, source = MemoryTransport(), SpokenSource()
    interpreter = Interpreter(transport, topics, source, Sessions("오늘 날씨 어때요", "서울 말고 부산"),
                              InterpreterSettings(retry=QUICK, echo_tail_s=0.0, vad=TEXT))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(interpreter.run(stop))
        await asyncio.wait_for(source.idle.wait(), 10)
        source.push(frames_of(silence(0.3)) + FIRST + frames_of(silence(0.45)))
        await asyncio.wait_for(source.idle.wait(), 30)
        early = completed(transport, topics)[0]
        for state in ("speaking", "idle"):  # the early answer plays, and ends
            transport.deliver(topics.player_state, encode(PlayerStateMessage(state=state, request_id=early.request_id)))
            interpreter.state_changed.clear()
            await asyncio.wait_for(interpreter.state_changed.wait(), 10)
        source.push(SECOND + frames_of(silence(1.0)))
        await asyncio.wait_for(source.idle.wait(), 30)
        await interpreter.drain()
        stop.set()
        await task

    asyncio.run(main())
    first, second = completed(transport, topics)
    assert (first.text, second.text, second.replaces) == ("오늘 날씨 어때요", "서울 말고 부산", None)
    assert not cancels(transport.sent, topics)


def test_an_input_that_ends_right_after_an_early_end_releases_its_held_answer(topics):
    """A WAV file that stops 400 ms after the question: nothing more will be said, so the held answer is released
    when the interpreter drains (not left to the player's 5 s lapse)."""
    frames = frames_of(silence(0.3)) + FIRST + frames_of(silence(0.22))
    transport = run(Sessions("오늘 날씨 어때요"), frames, topics)
    (question,) = completed(transport, topics)
    controls = [decode(ControlMessage, p) for t, p in transport.sent if t == topics.control]
    actions = [(c.action, c.request_id) for c in controls if c.action in ("hold", "release")]
    assert actions == [("hold", question.request_id), ("release", question.request_id)]
