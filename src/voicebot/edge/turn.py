"""End of turn, in one place: when has the person finished their question, and what goes out when.

``TurnDetector`` is pure: it is told what the VAD heard (speech started, each frame's verdict and the silence since
the voice, the end of an utterance), what the recognizer showed (partials, the final result) and what the audio turn
model said, always with the time of the audio (ms, the injected clock), and it answers with actions for the
interpreter to carry out: publish a transcript (holding its answer on the device or not), cancel an early request,
release a held answer, ask the audio model, end the utterance now. The interpreter only moves audio and messages.

How a turn ends (``EndOfTurn``):

- ``hangover``: ``hangover_ms`` of silence (700 ms), always. Slow, never early.
- ``text``: the Korean text cue (``endpointing.looks_finished``): after finished-sounding words a short silence
  (``early_end_ms``) ends the turn, and the transcript already goes out after ``preempt_ms`` when the recognizer
  showed those words after the voice stopped (only then can they be all of them). It can never act before the
  recognizer has shown the last word, so a recognizer that lags the audio makes it slow.
- ``audio``: Pipecat's Smart Turn v3 hears the last seconds of audio after ``turn_model_ms`` of silence (the model
  decides from the voice, not the words); "complete" ends the utterance at once, which makes the recognizer give its
  final result now instead of after the hangover.
- ``both``: whichever of the two says first that the turn is over. (The text cannot veto the model: with a lagging
  recognizer the words shown, even after the voice stopped, may be stale, and a particle in stale words says nothing
  about the end.)

Whatever ended the turn early, its answer is generated at once but held on the device until the end of the turn is
confirmed (``hangover_ms`` of silence after the voice, no new utterance, the final result agreeing), so a person who
goes on never hears an answer to half a question: speech within ``continuation_ms`` cancels the early request, and
the next transcript carries the whole question with ``replaces``. A final result with other words replaces the early
transcript once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from voicebot.edge.endpointing import looks_finished
from voicebot.protocol import TranscriptMessage, new_request_id, now_ms

log = logging.getLogger(__name__)

ENDED_BY_TEXT = "the words sound finished"
#: A barge-in that cuts an early answer completes that question if it comes this soon after the early end.
OVER_IT_MS = 10_000
EndOfTurnMode = Literal["hangover", "text", "audio", "both"]
MODES: tuple[EndOfTurnMode, ...] = ("hangover", "text", "audio", "both")


@dataclass(frozen=True)
class TurnSettings:
    mode: EndOfTurnMode = "both"
    hangover_ms: int = 700
    early_end_ms: int = 250
    """``text``: silence that ends a turn whose words sound finished (0: the text cue is off)."""
    preempt_ms: int = 60
    """``text``: silence after finished-sounding words, shown after the voice stopped, at which the transcript goes
    out before the turn has ended (0: at the early end)."""
    model_ms: int = 120
    """``audio``: silence after which the audio model is asked (once per pause)."""
    continuation_ms: int = 2000
    """Speech within this long after an early end continues that question."""
    start_frames: int = 4
    """Voiced frames after an early transcript that mean the person is going on (the VAD's own start threshold)."""
    max_partials_per_s: float = 4.0
    """Partials are throttled to this rate; unchanged text is never re-sent."""
    lang: str = "ko-KR"

    @property
    def uses_text(self) -> bool:
        return self.mode in ("text", "both") and self.early_end_ms > 0

    @property
    def uses_model(self) -> bool:
        return self.mode in ("audio", "both")


# -- what the interpreter is asked to do ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    """Publish ``message``; ``hold``: tell the player first to hold its answer until released."""

    message: TranscriptMessage
    hold: bool = False


@dataclass(frozen=True)
class Cancel:
    """The person went on after an early transcript (or its final result replaced it): cancel its answer."""

    request_id: str


@dataclass(frozen=True)
class Release:
    """The turn is over: the held answer may play."""

    request_id: str


@dataclass(frozen=True)
class AskModel:
    """Run the audio turn model on this utterance's audio and report with ``TurnDetector.model_verdict``."""

    turn: Turn


@dataclass(frozen=True)
class EndUtterance:
    """End the current utterance now ("early"): the recognizer gives its final result."""

    why: str


Action = Publish | Cancel | Release | AskModel | EndUtterance


# -- state ------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Turn:
    """One utterance's words and where its request stands."""

    request_id: str
    prefix: str = ""
    """The words of an early transcript this utterance goes on from."""
    replaces: str | None = None
    """The early request whose question this utterance finishes."""
    heard: str = ""
    """The recognizer's latest words (unthrottled)."""
    heard_at: int = -(10**9)
    voice_end: int = 0
    """When the voice last stopped (audio ms)."""
    last_partial: str = ""
    last_partial_at: int = -(10**9)
    preempted: str | None = None
    """The words its completed transcript already went out with, before the final result."""
    voiced_since: int = 0
    model_asked: bool = False
    model_complete: bool = False
    ended_early: bool = False
    ended_by_text: bool = False
    """The text cue ended it: the words shown sound finished (even shown before the voice stopped, they stand)."""
    final_seen: bool = False

    @property
    def words_complete(self) -> bool:
        """The words shown arrived after the voice stopped: they can be all of them (a recognizer lags the audio)."""
        return bool(self.heard) and self.heard_at > self.voice_end


@dataclass
class _Held:
    """A completed transcript that went out before the end of its turn was confirmed."""

    voice_end: int
    ended: bool = False  # its utterance ended: no more words of it can come
    final_settled: bool = False  # the final result agreed, or replaced it


@dataclass(frozen=True)
class _EarlyEnd:
    request_id: str
    text: str
    at: int


@dataclass
class TurnDetector:
    settings: TurnSettings = field(default_factory=TurnSettings)
    new_id: Callable[[], str] = new_request_id
    wall_ms: Callable[[], int] = now_ms
    """The epoch clock for ``speech_end_ts`` (the latency figures downstream); decisions use the audio time."""

    current: Turn | None = None
    _early: _EarlyEnd | None = None  # the last turn that ended early, while it may still go on
    _held: dict[str, _Held] = field(default_factory=dict)  # answers held on the device until the turn is over
    _withdrawn: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    _continued_by: dict[str, Turn] = field(default_factory=dict)  # early request -> the turn that goes on with it

    # -- the VAD ----------------------------------------------------------------------------------------------------

    def started(self, now: int, *, cutting: str | None = None) -> tuple[Turn, list[Action]]:
        """Speech started: a new turn, which continues the last early-ended one if it came soon enough, or if it is
        a barge-in that cuts that early turn's answer (``cutting``: the request being stopped) within ``OVER_IT_MS``."""
        turn = Turn(self.new_id(), voice_end=now)
        actions: list[Action] = []
        early, self._early = self._early, None
        over_it = early is not None and cutting == early.request_id and now - early.at <= OVER_IT_MS
        if early is not None and (now - early.at <= self.settings.continuation_ms or over_it):
            actions.append(self._withdraw(early.request_id))
            turn.prefix, turn.replaces = early.text, early.request_id
            self._continued_by[early.request_id] = turn
            while len(self._continued_by) > 4:  # (bounded: an entry lives until that turn's final result)
                self._continued_by.pop(next(iter(self._continued_by)))
        self.current = turn
        return turn, actions

    def frame(self, turn: Turn, now: int, *, voiced: bool, silent_ms: int, vad_silent_ms: int | None = None
              ) -> list[Action]:
        """One frame of the current utterance: ``voiced`` (the person's voice, not the VAD's afterglow), the silence
        since the voice stopped, and the VAD's own silence (webrtcvad smooths its verdict: ~90 ms later), which the
        text cue's early end counts, as the hangover does."""
        if turn is not self.current:
            return []
        s = self.settings
        turn.voice_end = now - silent_ms
        actions: list[Action] = []
        if silent_ms == 0:
            turn.model_asked = turn.model_complete = False  # a new pause gets a new verdict
        if turn.preempted is None:
            actions += self._maybe_preempt(turn, now, silent_ms)
        else:
            turn.voiced_since += voiced
            if turn.voiced_since >= s.start_frames:  # going on after the early transcript: it is withdrawn
                actions.append(self._withdraw(turn.request_id))
                turn.replaces = turn.request_id
                turn.request_id, turn.preempted, turn.voiced_since = self.new_id(), None, 0
                turn.last_partial = ""  # the new request gets its own partials
        if s.uses_model and not turn.model_asked and silent_ms >= s.model_ms:
            turn.model_asked = True
            actions.append(AskModel(turn))
        why = self._ends_now(turn, silent_ms if vad_silent_ms is None else vad_silent_ms)
        if why:
            turn.ended_by_text = why == ENDED_BY_TEXT
            actions.append(EndUtterance(why))
        return actions

    def model_verdict(self, turn: Turn, complete: bool) -> None:
        """What the audio model said about the pause it was asked about (ignored if the person spoke since)."""
        if turn is self.current and turn.model_asked:
            turn.model_complete = complete

    def ended(self, turn: Turn, now: int, *, early: bool, voice_end: int) -> list[Action]:
        """The utterance ended (``early``: by ``EndUtterance``); its final result follows (``final``)."""
        if self.current is turn:
            self.current = None
        turn.voice_end, turn.ended_early = voice_end, early
        actions: list[Action] = []
        if early and turn.preempted is None and turn.heard and (turn.words_complete or turn.ended_by_text):
            # (an end the audio model decided on, with the recognizer's words lagging, waits for the final result)
            actions += self._preempt(turn, now)
        if early:
            self._early = _EarlyEnd(turn.request_id, _joined(turn.prefix, turn.preempted or turn.heard), now)
        held = self._held.get(turn.request_id)
        if held is not None:
            held.ended, held.voice_end = True, voice_end
        return actions

    def aborted(self, turn: Turn | None) -> None:
        """The utterance was dropped (the device started speaking, the microphone or recognizer failed): no more of
        its words can come, so an answer held for it is settled by the usual rule, not left to lapse."""
        if turn is None or self.current is turn:
            self.current = None
        held = self._held.get(turn.request_id) if turn is not None else None
        if held is not None:
            held.ended = held.final_settled = True  # (no final result will come: the words that went out stand)

    # -- the recognizer ---------------------------------------------------------------------------------------------

    def partial(self, turn: Turn, text: str, now: int) -> list[Action]:
        if not text:
            return []
        if turn is not self.current:
            return self._late_words(turn, text, now)
        turn.heard, turn.heard_at = text, now
        actions = self._maybe_preempt(turn, now, now - turn.voice_end) if turn.preempted is None else []
        if text != turn.last_partial and now - turn.last_partial_at >= 1000 / self.settings.max_partials_per_s:
            turn.last_partial, turn.last_partial_at = text, now
            actions.append(Publish(TranscriptMessage(request_id=turn.request_id, state="proceeding", text=text,
                                                     lang=self.settings.lang)))
        return actions

    def _late_words(self, turn: Turn, text: str, now: int) -> list[Action]:
        """Words the recognizer shows after the audio model ended the utterance (it lags the audio): if they are all
        of them and sound finished, the transcript need not wait for the final result."""
        if turn.final_seen or turn.preempted is not None or turn.request_id in self._withdrawn:
            return []
        turn.heard, turn.heard_at = text, now
        shown: list[Action] = []
        if not turn.last_partial:
            # The turn ended before the recognizer showed any word (it lags): show the words once, for whoever
            # watches (the monitor, the console). Later words go into the completed transcript, not more partials.
            turn.last_partial, turn.last_partial_at = text, now
            shown.append(Publish(TranscriptMessage(request_id=turn.request_id, state="proceeding", text=text,
                                                   lang=self.settings.lang)))
        if not (turn.ended_early and self.settings.uses_text and turn.words_complete and looks_finished(text)):
            return shown
        if self._early is not None and self._early.request_id == turn.request_id:
            self._early = _EarlyEnd(turn.request_id, _joined(turn.prefix, text), self._early.at)
        actions = self._preempt(turn, now)
        self._held[turn.request_id].ended = True
        return shown + actions

    def final(self, turn: Turn, text: str, now: int, *, speech_end_ts: int) -> list[Action]:
        """The recognizer's final result (in the order the utterances were said): the transcript, unless an early one
        already went out with the same words (then its held answer may play once the turn is confirmed); a final with
        other words replaces it, once, unless the person already went on from it."""
        rid = turn.request_id
        turn.final_seen = True
        if rid in self._withdrawn:
            # The person went on: the next turn carries the whole question, once, and starts with these words as the
            # recognizer finally heard them (the early guess may have missed the last ones).
            going_on = self._continued_by.pop(rid, None)
            if going_on is not None and text:
                going_on.prefix = _joined(turn.prefix, text)
            return []
        unconfirmed = turn.voice_end if turn.ended_early else None
        if turn.preempted is not None:
            held = self._held.get(rid)
            if text and letters(text) != letters(turn.preempted):  # the final has other words than went out
                log.info("final result differs from the early transcript; it replaces it")
                actions: list[Action] = [self._withdraw(rid)]
                correction = TranscriptMessage(request_id=self.new_id(), state="completed",
                                               text=_joined(turn.prefix, text), lang=self.settings.lang,
                                               speech_end_ts=speech_end_ts, replaces=rid)
                if self._early is not None and self._early.request_id == rid:
                    # what the person may still go on from is now the correction
                    self._early = _EarlyEnd(correction.request_id, correction.text, self._early.at)
                return actions + self._completed(correction, now, held.voice_end if held else None)
            if held is not None:
                held.final_settled = True
            return self.tick(now)
        if not text:
            log.info("utterance %s had no words; nothing published", rid[-8:])
            return []
        message = TranscriptMessage(request_id=rid, state="completed", text=_joined(turn.prefix, text),
                                    lang=self.settings.lang, speech_end_ts=speech_end_ts, replaces=turn.replaces)
        if self._early is not None and self._early.request_id == rid:
            self._early = _EarlyEnd(rid, message.text, self._early.at)
        return self._completed(message, now, unconfirmed)

    # -- the player and time ----------------------------------------------------------------------------------------

    def answer_heard(self) -> None:
        """An answer is being heard: what the person says next is a new question."""
        self._early = None

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def tick(self, now: int) -> list[Action]:
        """Release every held answer whose turn is over: its utterance ended, ``hangover_ms`` of silence followed the
        voice with no new utterance, and the final result agreed."""
        actions: list[Action] = []
        for rid, held in list(self._held.items()):
            if (held.ended and held.final_settled and self.current is None
                    and now - held.voice_end >= self.settings.hangover_ms):
                del self._held[rid]
                actions.append(Release(rid))
        return actions

    def input_ended(self, now: int) -> list[Action]:
        """The input ended (a WAV file): nothing more will be said, every turn is over."""
        for held in self._held.values():
            held.ended, held.voice_end = True, -(10**9)
        return self.tick(now)

    # -- decisions --------------------------------------------------------------------------------------------------

    def _ends_now(self, turn: Turn, silent_ms: int) -> str:
        s = self.settings
        if s.uses_text and silent_ms >= s.early_end_ms and looks_finished(turn.heard):
            return ENDED_BY_TEXT
        if s.uses_model and turn.model_complete:
            return "the audio turn model heard a finished turn"
        return ""

    def _maybe_preempt(self, turn: Turn, now: int, silent_ms: int) -> list[Action]:
        """Once the words sound finished and ``preempt_ms`` of silence followed, the transcript goes out (the model
        writes the answer during the rest of the wait)."""
        s = self.settings
        if (s.uses_text and s.preempt_ms and turn.words_complete and silent_ms >= s.preempt_ms
                and looks_finished(turn.heard)):
            return self._preempt(turn, now)
        return []

    def _preempt(self, turn: Turn, now: int) -> list[Action]:
        turn.preempted, turn.voiced_since = turn.heard, 0
        message = TranscriptMessage(request_id=turn.request_id, state="completed",
                                    text=_joined(turn.prefix, turn.heard), lang=self.settings.lang,
                                    speech_end_ts=self.wall_ms() - (now - turn.voice_end), replaces=turn.replaces)
        self._held[message.request_id] = _Held(turn.voice_end)
        self._bound_held()
        return [Publish(message, hold=True)]

    def _completed(self, message: TranscriptMessage, now: int, unconfirmed_end: int | None) -> list[Action]:
        """A final transcript; held when its turn ended early and is not confirmed yet."""
        if unconfirmed_end is None or now - unconfirmed_end >= self.settings.hangover_ms:
            return [Publish(message)]
        self._held[message.request_id] = _Held(unconfirmed_end, ended=True, final_settled=True)
        self._bound_held()
        return [Publish(message, hold=True)]

    def _bound_held(self) -> None:
        while len(self._held) > 8:  # (bounded: a turn settles within seconds)
            self._held.pop(next(iter(self._held)))

    def _withdraw(self, request_id: str) -> Cancel:
        log.info("the early answer of %s is cancelled", request_id[-8:])
        self._held.pop(request_id, None)
        self._withdrawn.append(request_id)
        return Cancel(request_id)


def _words(text: str) -> str:
    return " ".join(text.split())


def letters(text: str) -> str:
    """What was said, without spacing and punctuation (a final that only adds "?" says the same)."""
    return "".join(c for c in text if c.isalnum())


def _joined(prefix: str, text: str) -> str:
    return _words(f"{prefix} {text}")
