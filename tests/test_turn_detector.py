"""The turn detector alone: no audio, no loop, an injected clock (ms of audio). What ends a turn in each mode, what
goes out and when, and that an answer to half a question is held, withdrawn or replaced, never released."""

from __future__ import annotations

import itertools

import pytest

from voicebot.edge.turn import (
    AskModel,
    Cancel,
    EndUtterance,
    Publish,
    Release,
    Turn,
    TurnDetector,
    TurnSettings,
)

FRAME = 30


class Run:
    """Drives a detector frame by frame: ``speak(ms)`` voiced frames, ``pause(ms)`` silent ones; every action kept."""

    def __init__(self, mode: str = "text", **settings) -> None:
        ids = (f"req-{i}" for i in itertools.count())
        self.det = TurnDetector(TurnSettings(mode=mode, **settings), new_id=lambda: next(ids), wall_ms=lambda: 0)
        self.now = 0
        self.turn: Turn | None = None
        self.actions: list = []
        self.silent = 0

    def start(self) -> Turn:
        self.turn, actions = self.det.started(self.now)
        self.actions += actions
        self.silent = 0
        return self.turn

    def speak(self, ms: int) -> None:
        if self.turn is None or self.det.current is None:
            self.start()
        for _ in range(ms // FRAME):
            self.now += FRAME
            self.silent = 0
            self.actions += self.det.frame(self.turn, self.now, voiced=True, silent_ms=0)

    def pause(self, ms: int, *, until_end: bool = False) -> bool:
        """Silent frames; stops at an ``EndUtterance`` (and ends the utterance as the VAD would) or the hangover."""
        for _ in range(ms // FRAME):
            self.now += FRAME
            self.actions += self.det.tick(self.now)
            if self.det.current is None:
                continue
            self.silent += FRAME
            new = self.det.frame(self.turn, self.now, voiced=False, silent_ms=self.silent)
            self.actions += new
            if any(isinstance(a, EndUtterance) for a in new):
                self.actions += self.det.ended(self.turn, self.now, early=True, voice_end=self.now - self.silent)
            elif self.silent >= self.det.settings.hangover_ms:
                self.actions += self.det.ended(self.turn, self.now, early=False, voice_end=self.now - self.silent)
        return self.det.current is None

    def partial(self, text: str) -> None:
        self.actions += self.det.partial(self.turn, text, self.now)

    def final(self, turn: Turn, text: str) -> None:
        self.actions += self.det.final(turn, text, self.now, speech_end_ts=0)

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]

    def completed(self) -> list[Publish]:
        return [a for a in self.of(Publish) if a.message.state == "completed"]


def test_text_cue_sends_early_holds_and_releases_after_the_hangover():
    r = Run("text")
    r.speak(900)
    r.pause(30)
    r.partial("오늘 날씨 어때요")  # shown after the voice stopped: all of the words
    r.pause(60)
    [early] = r.completed()
    assert early.hold and early.message.text == "오늘 날씨 어때요"
    assert r.pause(200) and r.of(EndUtterance)  # 250 ms of silence after finished words ends the turn
    r.final(r.turn, "오늘 날씨 어때요?")  # (only punctuation differs: the early transcript stands)
    assert not r.of(Release)
    r.pause(600)
    assert [a.request_id for a in r.of(Release)] == [early.message.request_id]
    assert not r.of(Cancel) and len(r.completed()) == 1


def test_stale_words_never_go_out_early():
    """Words shown while the person was still speaking may be half of it: no preemptive transcript from them."""
    r = Run("text")
    r.speak(600)
    r.partial("오늘 날씨가")
    r.speak(600)
    r.pause(120)
    assert not r.completed()


def test_going_on_after_the_early_transcript_withdraws_it_and_the_final_asks_the_whole_question():
    r = Run("text")
    r.speak(900)
    r.pause(30)
    r.partial("네 알겠어요.")
    r.pause(60)
    [early] = r.completed()
    r.speak(300)  # the person goes on within the same utterance
    assert [c.request_id for c in r.of(Cancel)] == [early.message.request_id]
    r.partial("네 알겠어요. 그런데 내일은 어때요")
    r.speak(300)
    r.pause(720)
    r.final(r.turn, "네 알겠어요. 그런데 내일은 어때요?")
    whole = r.completed()[-1]
    assert whole.message.text.rstrip("?") == "네 알겠어요. 그런데 내일은 어때요"
    assert whole.message.replaces == early.message.request_id
    assert [a.request_id for a in r.of(Release)] == [whole.message.request_id]  # never the early one


def test_a_continuation_after_an_early_end_carries_the_final_words_of_the_first_part():
    r = Run("text")
    first = r.start()
    r.speak(900)
    r.pause(30)
    r.partial("네 알겠어요")
    assert r.pause(300)  # ended early
    [early] = r.completed()
    second = r.start()  # 300 ms later the person speaks again: the same question
    assert [c.request_id for c in r.of(Cancel)] == [early.message.request_id]
    r.final(first, "네 알겠어요 정말")  # the recognizer's final for the first part, later than the early guess
    r.speak(600)
    r.partial("그런데 내일은 어때요")
    r.pause(800)
    r.final(second, "그런데 내일은 어때요")
    assert [p.message.text for p in r.completed()] == ["네 알겠어요", "네 알겠어요 정말 그런데 내일은 어때요"]
    assert r.completed()[-1].message.replaces == early.message.request_id
    assert [a.request_id for a in r.of(Release)] == [r.completed()[-1].message.request_id]  # never the early one


def test_a_final_with_other_words_replaces_the_early_transcript_once():
    r = Run("text")
    r.speak(900)
    r.pause(30)
    r.partial("내일 비 와요")
    assert r.pause(300)
    r.final(r.turn, "내일 비 와요?")
    r2 = Run("text")
    r2.speak(900)
    r2.pause(30)
    r2.partial("내일 비 와요")
    r2.pause(300)
    r2.final(r2.turn, "내일 눈 와요")
    early, correction = r2.completed()
    assert [c.request_id for c in r2.of(Cancel)] == [early.message.request_id]
    assert correction.message.replaces == early.message.request_id and correction.hold
    r2.pause(600)
    assert [a.request_id for a in r2.of(Release)] == [correction.message.request_id]


def test_a_new_utterance_keeps_the_answer_held():
    r = Run("text", continuation_ms=0)  # (a new question, not a continuation)
    r.speak(900)
    r.pause(30)
    r.partial("지금 몇 시예요")
    r.pause(300)
    r.final(r.turn, "지금 몇 시예요")
    r.start()
    r.speak(900)  # someone speaks before the hangover confirmed the turn: still held
    assert not r.of(Release)


@pytest.mark.parametrize("mode", ["audio", "both"])
def test_the_audio_model_ends_a_turn_whose_words_have_not_been_shown(mode):
    r = Run(mode)
    r.speak(900)
    r.partial("오늘 날씨가")  # stale: shown while speaking (the recognizer lags)
    r.pause(180)
    [ask] = r.of(AskModel)
    assert ask.turn is r.turn
    r.det.model_verdict(ask.turn, True)
    turn = r.turn
    assert r.pause(30)  # ended at the next frame
    assert not r.completed()  # the words shown are stale: the final result goes out, not them
    r.final(turn, "오늘 날씨가 좋아요")
    [whole] = r.completed()
    assert whole.hold and whole.message.text == "오늘 날씨가 좋아요"
    r.pause(600)
    assert [a.request_id for a in r.of(Release)] == [whole.message.request_id]


def test_a_verdict_about_a_pause_the_person_ended_is_ignored():
    r = Run("audio")
    r.speak(900)
    r.pause(180)
    [ask] = r.of(AskModel)
    r.speak(90)  # speaking again before the verdict arrived
    r.det.model_verdict(ask.turn, True)
    r.pause(90)
    assert not r.of(EndUtterance)
    r.pause(120)
    assert len(r.of(AskModel)) == 2  # a new pause, a new question to the model


def test_an_incomplete_verdict_leaves_the_hangover_to_end_the_turn():
    r = Run("audio")
    r.speak(900)
    r.pause(180)
    r.det.model_verdict(r.of(AskModel)[0].turn, False)
    assert not r.pause(450)
    assert r.pause(120) and not r.of(EndUtterance)  # 700 ms: the hangover


def test_both_ends_on_whichever_says_first_that_the_turn_is_over():
    words = Run("both")
    words.speak(900)
    words.pause(30)
    words.partial("오늘 날씨 어때요")
    assert words.pause(240) and words.of(EndUtterance)[0].why == "the words sound finished"
    model = Run("both")
    model.speak(900)
    model.pause(30)
    model.partial("오늘 날씨가 좋은데")  # words that go on: the model still decides
    model.pause(120)
    model.det.model_verdict(model.of(AskModel)[0].turn, True)
    assert model.pause(30) and model.of(EndUtterance)[0].why != "the words sound finished"


def test_hangover_mode_never_ends_early_and_holds_nothing():
    r = Run("hangover")
    r.speak(900)
    r.pause(30)
    r.partial("오늘 날씨 어때요")
    assert not r.pause(600)
    assert r.pause(120)
    r.final(r.turn, "오늘 날씨 어때요")
    [done] = r.completed()
    assert not done.hold and not r.of(AskModel) and not r.of(EndUtterance)


def test_partials_are_throttled_and_never_repeated():
    r = Run("text", max_partials_per_s=4)
    r.speak(30)
    for i, text in enumerate(["오늘", "오늘", "오늘 날씨", "오늘 날씨 어"]):
        r.now += 100 * (i > 0)
        r.partial(text)
    assert [p.message.text for p in r.of(Publish) if p.message.state == "proceeding"] == ["오늘", "오늘 날씨 어"]


def test_held_answers_are_bounded():
    """A stream of early transcripts nobody confirms (hostile or broken input) never grows the held set."""
    r = Run("text", continuation_ms=0)
    for _ in range(50):
        r.start()
        r.speak(300)
        r.pause(30)
        r.partial("네 알겠어요")
        r.pause(60)
        r.speak(30)  # (the held answers' turns never end: a new utterance starts each time)
    assert len(r.det._held) <= 8


def test_words_shown_after_the_model_ended_the_turn_go_out_before_the_final():
    """A lagging recognizer still shows the last words after the stream was ended: all of them, finished-sounding,
    they need not wait for the final result (which then only confirms them)."""
    r = Run("both")
    r.speak(900)
    r.partial("내일 비가")  # stale
    r.pause(150)
    r.det.model_verdict(r.of(AskModel)[0].turn, True)
    turn = r.turn
    assert r.pause(30) and not r.completed()
    r.now += 200
    r.actions += r.det.partial(turn, "내일 비가 올까요", r.now)
    [early] = r.completed()
    assert early.hold and early.message.text == "내일 비가 올까요"
    r.final(turn, "내일 비가 올까요?")
    assert len(r.completed()) == 1 and not r.of(Cancel)
    r.pause(600)
    assert [a.request_id for a in r.of(Release)] == [early.message.request_id]


def test_a_barge_in_over_the_early_answer_completes_its_question_even_after_the_window():
    r = Run("text", continuation_ms=2000)
    r.speak(900)
    r.pause(30)
    r.partial("네 알겠어요")
    assert r.pause(300)
    [early] = r.completed()
    r.now += 3000  # the early answer is playing, 3 s later the person talks over it
    turn, actions = r.det.started(r.now, cutting=early.message.request_id)
    assert turn.prefix == "네 알겠어요" and turn.replaces == early.message.request_id
    assert [a.request_id for a in actions if isinstance(a, Cancel)] == [early.message.request_id]
    other = Run("text", continuation_ms=2000)  # the same, over some other answer: a new question
    other.speak(900)
    other.pause(30)
    other.partial("네 알겠어요")
    other.pause(300)
    other.now += 3000
    assert other.det.started(other.now, cutting="another-request")[0].prefix == ""
