"""voice-interpreter: microphone -> VAD -> streaming STT -> transcripts, with an echo guard.

One asyncio loop. Each VAD utterance becomes one request (one UUIDv7 ``requestId``): throttled ``proceeding`` partials
while the person speaks, then exactly one ``completed`` transcript with all of the utterance's finals. Nothing reaches
the recognizer while nobody speaks, and nothing is heard while the device itself speaks (half-duplex), except the
optional stop word, which cancels the answer being played.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from voicebot.edge.audio import AudioError, AudioSource
from voicebot.edge.echo_guard import EchoGuard
from voicebot.edge.endpointing import looks_finished
from voicebot.edge.runner import DEVICE_WAIT_S, ComponentFailed
from voicebot.edge.settings import InterpreterConfig
from voicebot.edge.stopword import StopWordListener
from voicebot.edge.stt import RetryPolicy, SttBackend, SttError, UtteranceTranscriber
from voicebot.edge.vad import SpeechAudio, SpeechEnded, SpeechStarted, VadEvent, VadGate, VadSettings
from voicebot.messaging import Outbox, Transport, subscribe
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    ControlMessage,
    EventMessage,
    Message,
    PlayerStateMessage,
    ProtocolError,
    Topics,
    TranscriptMessage,
    decode,
    encode,
    new_request_id,
    now_ms,
)

log = logging.getLogger(__name__)

#: On stop, how long the last messages may take to go out (a component must stop within 2 s, broker or not).
STOP_DRAIN_S = 1.0


@dataclass(frozen=True)
class InterpreterSettings:
    lang: str = "ko-KR"
    vad: VadSettings = field(default_factory=VadSettings)
    max_partials_per_s: float = 4.0
    """Partials are throttled to this rate; unchanged text is never re-sent."""
    echo_tail_s: float = 0.4
    """Keep the microphone muted this long after the player goes idle (room echo, speaker ring-down)."""
    speaking_expiry_s: float = 6.0
    """A "speaking" state not repeated for this long (the player sends it every 2 s) has expired: listen again."""
    max_mute_s: float = 120.0
    """Never stay muted longer than this in one go, whatever the player says (a player stuck in "speaking")."""
    stop_word_enabled: bool = False
    stop_word: str = "그만"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    source_retry_s: float = 2.0
    """Wait before reopening a microphone that failed (unplugged, busy)."""
    device_give_up_s: float = DEVICE_WAIT_S
    """A microphone that keeps failing this long ends the component (Greengrass restarts it)."""
    stt_give_up: tuple[int, float] = (3, 120.0)
    """This many utterances in a row that the recognizer failed, over at least this many seconds (unreachable,
    no credentials), end the component after an ``error`` event: Greengrass shows it ERRORED and restarts it."""
    continuation_s: float = 2.0
    """After a turn ended early (``VadSettings.early_end_ms``), speech within this long continues it: the early
    answer is cancelled before it plays and the next transcript carries the whole question."""


@dataclass
class _Utterance:
    request_id: str
    transcriber: UtteranceTranscriber
    last_partial: str = ""
    last_partial_at: float = float("-inf")
    heard: str = ""  # the latest words, unthrottled
    prefix: str = ""  # the words of a preemptive transcript this utterance goes on from
    preempted: str | None = None  # the words its completed transcript already went out with (before the final)
    voiced_since: int = 0  # voiced frames heard since then: enough of them and the person is going on
    heard_frame: int = 0  # ``frames_seen`` when the latest partial arrived
    replaces: str | None = None  # the early request whose question this utterance finishes


@dataclass
class _Unconfirmed:
    """A completed transcript that went out before the end of the turn was confirmed: its answer is held on the
    device (control ``hold``) until ``hangover_ms`` of silence followed the voice and the recognizer's final result
    agreed with it (``release``), or cancelled when the person went on."""

    voice_end_frame: int  # ``frames_seen`` when the voice stopped
    ended: bool = False  # the VAD ended its utterance (early): no more words of it can come
    final_settled: bool = False  # the final result agreed, or replaced it


@dataclass(frozen=True)
class _Preempted:
    request_id: str
    text: str
    at: float


class Interpreter:
    def __init__(self, transport: Transport, topics: Topics, source: AudioSource, stt: SttBackend,
                 settings: InterpreterSettings | None = None, *, clock: Callable[[], float] = time.monotonic,
                 stop_word_stt: SttBackend | None = None,
                 on_transcript: Callable[[TranscriptMessage], None] | None = None) -> None:
        self.transport = transport
        self.topics = topics
        self.source = source
        self.stt = stt
        self.stop_word_stt = stop_word_stt or stt
        self.on_transcript = on_transcript  # (the benchmark times each transcript from the moment it goes out)
        self.settings = settings or InterpreterSettings()
        self.clock = clock
        self.vad = VadGate(self.settings.vad)
        s = self.settings
        self.echo_guard = EchoGuard(echo_tail_s=s.echo_tail_s, speaking_expiry_s=s.speaking_expiry_s,
                                    max_mute_s=s.max_mute_s)  # fed by the player's state, on a device-local topic
        self.frames_seen = 0
        self.stt_bytes = 0  # audio that reached the recognizer (the VAD keeps silence away from it)
        self.utterances = 0
        self.published: deque[TranscriptMessage] = deque(maxlen=256)  # the latest (bounded: runs for months)
        self.state_changed = asyncio.Event()
        self._utterance: _Utterance | None = None
        self.stop_word = StopWordListener(self.stop_word_stt, self.settings.vad, self.settings.retry,
                                          self._check_stop_word, self._in_background)
        self._next_vad: VadGate | None = None
        self._finishing: set[asyncio.Task[None]] = set()  # utterances waiting for their final result
        self._previous: asyncio.Task[None] | None = None  # the utterance before: transcripts go out in order
        self._preempted: _Preempted | None = None  # the last turn that ended early, while it may still go on
        self._unconfirmed: dict[str, _Unconfirmed] = {}  # answers held on the device until the turn is over
        self._withdrawn: deque[str] = deque(maxlen=16)  # early requests the person went on from
        self._continued_by: dict[str, _Utterance] = {}  # early request -> the utterance that goes on with it
        self.outbox = Outbox(transport, "interpreter")
        self._stt_failures: list[float] = []  # when each utterance in a row failed in the recognizer (bounded)
        self._unhealthy = asyncio.Event()
        self._unhealthy_reason = ""
        self._failures_seen: set[str] = set()  # kinds of background failure already logged with a traceback

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set or the source ends (a WAV file); then send everything still pending."""
        loop = asyncio.get_running_loop()
        await subscribe(self.transport, self.topics.player_state, QOS_AT_MOST_ONCE,
                        lambda _t, payload: loop.call_soon_threadsafe(self._on_player_state, payload))
        log.info("interpreter listening on %s with %s", self.source.description, self.stt.name)
        pump = asyncio.create_task(self._pump())
        stopper = asyncio.create_task(stop.wait())
        unhealthy = asyncio.create_task(self._unhealthy.wait())
        await asyncio.wait({pump, stopper, unhealthy}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        unhealthy.cancel()
        if not pump.done():  # stopped (a signal) or cannot go on: end now, send what can go out in a second
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await self.close()
            await self.outbox.drain(STOP_DRAIN_S)
            if self._unhealthy.is_set():
                raise ComponentFailed(self._unhealthy_reason)
            return
        try:
            pump.result()
        except ComponentFailed:
            await self.close()
            await self.outbox.drain(STOP_DRAIN_S)
            raise
        await self.drain()  # the WAV source ended: everything it said goes out

    async def _pump(self) -> None:
        """The microphone loop, supervised: a failing microphone is reopened after a pause; any other failure while
        handling a frame drops that utterance, is logged (the first time and then every 100th), and listening goes on
        with the next frame. Only the end of a WAV source ends it."""
        failures = 0
        failing_since: float | None = None
        while True:
            try:
                async for frame in self.source.frames():
                    failing_since = None
                    try:
                        await self.process(frame)
                    except (AudioError, OSError):
                        raise
                    except Exception as exc:
                        failures += 1
                        if failures == 1 or failures % 100 == 0:
                            log.error("interpreter: a frame could not be handled (%s: %s; %d so far); the utterance "
                                      "is dropped and listening goes on", type(exc).__name__, exc, failures)
                        await self._abort_utterance()
                for event in self.vad.flush():  # the file ended mid-utterance
                    await self._on_vad(event)
                return
            except (AudioError, OSError) as exc:
                now = self.clock()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.settings.device_give_up_s:
                    raise ComponentFailed(f"the microphone kept failing for {now - failing_since:.0f} s: {exc}") from exc
                log.error("microphone failed (%s); retrying in %.0f s", exc, self.settings.source_retry_s)
                self._emit_event("error", detail=f"microphone failed: {exc}")
                await self._abort_utterance()
                await asyncio.sleep(self.settings.source_retry_s)

    async def drain(self) -> None:
        """Wait for the utterances still being finished, then until every message handed to the transport has been
        sent (QoS1: acknowledged)."""
        if self._finishing:
            await asyncio.wait(set(self._finishing))
        if self._utterance is None:
            self._release_all()  # nothing more is being said: every held answer's turn is over
        await self.outbox.drain()

    def _in_background(self, coro: Any) -> asyncio.Task[None]:
        """Run ``coro`` beside the microphone loop (a final result may take seconds; the microphone must not wait).
        Whatever it raises is logged with its traceback (once per kind) and published as an ``error`` event."""
        task = asyncio.create_task(coro)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        kind = type(exc).__name__
        if kind not in self._failures_seen:
            self._failures_seen.add(kind)
            log.error("interpreter: a background task failed", exc_info=(type(exc), exc, exc.__traceback__))
        self._emit_event("error", detail=f"interpreter: background task failed: {kind}: {exc}")

    def apply_config(self, config: Mapping[str, Any]) -> None:
        """Live settings from the component configuration. A new VAD takes over between utterances; a bad value
        keeps the current one and is reported once (a log line and an ``error`` event naming the key)."""
        vad, s = self.settings.vad, self.settings
        problems: list[str] = []
        new = InterpreterConfig(
            vad_engine=vad.engine, vad_aggressiveness=vad.aggressiveness, preroll_ms=vad.preroll_ms,
            hangover_ms=vad.hangover_ms, max_utterance_s=vad.max_utterance_s, early_end_ms=vad.early_end_ms,
            preempt_ms=vad.preempt_ms, quiet_margin_db=vad.quiet_margin_db, echo_tail_s=s.echo_tail_s,
            stop_word=s.stop_word if s.stop_word_enabled else "",
        ).merged(config, problems)
        for line in problems:
            self._emit_event("error", detail=f"configuration: {line}")
        new_vad = replace(vad, engine=new.vad_engine, aggressiveness=new.vad_aggressiveness,
                          preroll_ms=new.preroll_ms, hangover_ms=new.hangover_ms, max_utterance_s=new.max_utterance_s,
                          early_end_ms=new.early_end_ms, preempt_ms=new.preempt_ms,
                          quiet_margin_db=new.quiet_margin_db)
        self.settings = replace(s, vad=new_vad, echo_tail_s=new.echo_tail_s,
                                stop_word_enabled=bool(new.stop_word.strip()), stop_word=new.stop_word.strip() or "그만")
        self.echo_guard.echo_tail_s = new.echo_tail_s
        if new_vad != vad:
            try:
                self._next_vad = VadGate(new_vad)
            except (RuntimeError, ValueError) as exc:  # e.g. silero chosen but not installed
                log.error("interpreter: VAD settings %s not applied: %s", new_vad, exc)
                self.settings = replace(self.settings, vad=vad)
                return
            if not self.vad.in_speech:
                self.vad, self._next_vad = self._next_vad, None

    # -- echo guard --------------------------------------------------------------------------------------------------

    def _on_player_state(self, payload: bytes) -> None:
        try:
            state = decode(PlayerStateMessage, payload)
        except ProtocolError as exc:
            log.warning("interpreter: bad player state: %s", exc)
            return
        self.echo_guard.on_player_state(state.state == "speaking", state.request_id, self.clock())
        if state.state == "speaking":
            self._preempted = None  # an answer is being heard: what the person says next is a new question
        self.state_changed.set()

    def summary(self) -> str:
        heard = self.frames_seen * self.settings.vad.frame_ms / 1000
        return (f"interpreter: {self.utterances} utterances; {self.stt_bytes / 2 / 16_000:.1f} s of {heard:.1f} s "
                f"heard went to speech recognition")

    def muted(self) -> bool:
        was_speaking = self.echo_guard.speaking
        muted = self.echo_guard.muted(self.clock())
        if was_speaking and not self.echo_guard.speaking:  # expired: listening again
            self.state_changed.set()
        return muted

    # -- audio -------------------------------------------------------------------------------------------------------

    async def process(self, frame: bytes) -> None:
        self.frames_seen += 1
        if self._unconfirmed:
            self._confirm_turns()
        # While the stop word is being said, all of it goes to the stop-word listener, even after the player has
        # stopped: the rest of "그만" must not become a question.
        if self.muted() or self.stop_word.active:
            if self.vad.in_speech or self._utterance:
                await self._abort_utterance()  # the device started talking: what follows would be its own voice
            self.vad.reset()
            listening = self.stop_word.active or (self.settings.stop_word_enabled and self.echo_guard.speaking)
            if listening and await self.stop_word.process(frame):  # it ended: the room may still ring with it
                self.echo_guard.extend(self.clock())
            return
        for event in self.vad.process(frame):
            await self._on_vad(event)

    async def _on_vad(self, event: VadEvent) -> None:
        try:
            if isinstance(event, SpeechStarted):
                utterance = _Utterance(new_request_id(), UtteranceTranscriber(
                    self.stt, on_partial=lambda text: self._on_partial(utterance, text), retry=self.settings.retry))
                self._continue_preempted(utterance)
                self._utterance = utterance
                self.utterances += 1
                await utterance.transcriber.start()
                for frame in event.preroll:
                    self.stt_bytes += len(frame)
                    await utterance.transcriber.send(frame)
            elif isinstance(event, SpeechAudio) and self._utterance:
                self.stt_bytes += len(event.frame)
                await self._utterance.transcriber.send(event.frame)
                self._watch_preemption(self._utterance, voiced=self.vad.hears_voice)
            elif isinstance(event, SpeechEnded) and self._utterance:
                utterance, self._utterance = self._utterance, None
                if self._next_vad is not None:  # new VAD settings arrived mid-utterance
                    self.vad, self._next_vad = self._next_vad, None
                speech_end = now_ms() - event.trailing_silence_ms
                voice_end = self.frames_seen - event.trailing_silence_ms // self.settings.vad.frame_ms
                if event.reason == "early" and utterance.heard:
                    if utterance.preempted is None:
                        self._preempt(utterance, speech_end, voice_end)
                    self._preempted = _Preempted(utterance.request_id, _joined(utterance.prefix, utterance.preempted
                                                                              or utterance.heard), self.clock())
                if utterance.request_id in self._unconfirmed:
                    held = self._unconfirmed[utterance.request_id]
                    held.ended, held.voice_end_frame = True, voice_end
                unconfirmed_end = voice_end if event.reason == "early" else None
                finish = self._finish(utterance, speech_end, after=self._previous, unconfirmed_end=unconfirmed_end)
                if getattr(self.stt, "runs_locally", False):
                    # A local recognizer's final result is milliseconds of CPU (Vosk): wait for it, so that only one
                    # recognizer (tens of MB each) is ever alive. A network one may take seconds: not on this loop.
                    await finish
                    self._previous = None
                else:
                    self._previous = self._in_background(finish)
        except SttError as exc:
            self._could_not_hear(self._utterance.request_id if self._utterance else None, exc)
            await self._abort_utterance()

    async def _finish(self, utterance: _Utterance, speech_end: int, *, after: asyncio.Task[None] | None,
                      unconfirmed_end: int | None = None) -> None:
        """The recognizer's final result: the transcript, unless an early one already went out with the same words
        (then its held answer may play once the turn is confirmed); a final with other words replaces it, once,
        unless the person already went on from it. ``unconfirmed_end``: the turn ended early, at this frame, and is
        not confirmed yet."""
        try:
            text = await utterance.transcriber.end()
            if after is not None:  # recognised in parallel, published in the order they were said
                await asyncio.wait({after})
        except SttError as exc:
            self._could_not_hear(utterance.request_id, exc)
            await utterance.transcriber.abort()
            return
        self._stt_failures.clear()  # the recognizer works
        if utterance.preempted is not None:
            early = self._unconfirmed.get(utterance.request_id)
            if utterance.request_id in self._withdrawn:
                # The person went on: the next utterance carries the whole question, once, and starts with these
                # words as the recognizer finally heard them (the early guess may have missed the last ones).
                going_on = self._continued_by.pop(utterance.request_id, None)
                if going_on is not None and text:
                    going_on.prefix = _joined(utterance.prefix, text)
                return
            if text and _letters(text) != _letters(utterance.preempted):  # the final has other words than went out
                log.info("final result differs from the early transcript; it replaces it")
                self._withdraw(utterance.request_id)
                correction = TranscriptMessage(
                    request_id=new_request_id(), state="completed", text=_joined(utterance.prefix, text),
                    lang=self.settings.lang, speech_end_ts=speech_end, replaces=utterance.request_id)
                if self._preempted is not None and self._preempted.request_id == utterance.request_id:
                    # what the person may still go on from is now the correction
                    self._preempted = _Preempted(correction.request_id, correction.text, self._preempted.at)
                self._send_transcript(correction, unconfirmed_end=early.voice_end_frame if early else None)
            elif early is not None:
                early.final_settled = True
                self._confirm_turns()
        elif text:
            self._send_transcript(TranscriptMessage(request_id=utterance.request_id, state="completed",
                                                    text=_joined(utterance.prefix, text), lang=self.settings.lang,
                                                    speech_end_ts=speech_end, replaces=utterance.replaces),
                                  unconfirmed_end=unconfirmed_end)
        else:
            log.info("utterance %s had no words; nothing published", utterance.request_id[-8:])

    def _on_partial(self, utterance: _Utterance, text: str) -> None:
        if utterance is not self._utterance or not text:
            return
        utterance.heard, utterance.heard_frame = text, self.frames_seen
        self.vad.early_end = looks_finished(text)  # finished-sounding words: a short silence ends the turn
        self._watch_preemption(utterance)
        if text == utterance.last_partial:
            return
        now = self.clock()
        if now - utterance.last_partial_at < 1.0 / self.settings.max_partials_per_s:
            return
        utterance.last_partial, utterance.last_partial_at = text, now
        self._send_transcript(TranscriptMessage(request_id=utterance.request_id, state="proceeding", text=text,
                                                lang=self.settings.lang))

    # -- early end of turn -------------------------------------------------------------------------------------------

    def _watch_preemption(self, utterance: _Utterance, *, voiced: bool = False) -> None:
        """Before the turn ends: once the words sound finished and ``preempt_ms`` of silence followed, the transcript
        goes out (the model writes the answer during the rest of the wait); if the person speaks again after that,
        it is withdrawn (cancelled before it plays) and the utterance goes on under a new request id."""
        vad = self.settings.vad
        if utterance is not self._utterance or not vad.early_end_ms or not vad.preempt_ms:
            return
        if utterance.preempted is None:
            silent_ms = self.vad.voice_silent_ms
            voice_end = self.frames_seen - silent_ms // vad.frame_ms
            # Only words the recognizer showed after the voice stopped can be all of them (it lags the audio).
            if (utterance.heard and self.vad.early_end and silent_ms >= vad.preempt_ms
                    and utterance.heard_frame > voice_end):
                self._preempt(utterance, now_ms() - silent_ms, voice_end)
            return
        utterance.voiced_since += voiced  # (a frame, not a partial result: only frames are counted)
        if utterance.voiced_since >= self.vad.start_frames:
            self._withdraw(utterance.request_id)
            utterance.replaces = utterance.request_id
            utterance.request_id, utterance.preempted, utterance.voiced_since = new_request_id(), None, 0
            utterance.last_partial = ""  # the new request gets its own partials

    def _preempt(self, utterance: _Utterance, speech_end: int, voice_end: int) -> None:
        """Send the completed transcript now, from the words heard so far, so the answer is being written; the
        device holds it until the turn is confirmed (the recognizer's final result follows in ``_finish``)."""
        utterance.preempted, utterance.voiced_since = utterance.heard, 0
        self._send_transcript(TranscriptMessage(request_id=utterance.request_id, state="completed",
                                                text=_joined(utterance.prefix, utterance.heard),
                                                lang=self.settings.lang, speech_end_ts=speech_end,
                                                replaces=utterance.replaces), unconfirmed_end=voice_end,
                            final=False)

    def _confirm_turns(self) -> None:
        """Release every held answer whose turn is over: its utterance ended, ``hangover_ms`` of silence followed the
        voice with no new utterance, and the final result agreed."""
        hangover = self.settings.vad.frames(self.settings.vad.hangover_ms)
        for request_id, held in list(self._unconfirmed.items()):
            if (held.ended and held.final_settled and self._utterance is None
                    and self.frames_seen - held.voice_end_frame >= hangover):
                del self._unconfirmed[request_id]
                self._send(self.topics.control, ControlMessage(action="release", request_id=request_id),
                           QOS_AT_MOST_ONCE)

    def _release_all(self) -> None:
        """The input ended (a WAV file): nothing more will be said, every turn is over."""
        for held in self._unconfirmed.values():
            held.ended, held.voice_end_frame = True, -(10**9)
        self._confirm_turns()

    def _continue_preempted(self, utterance: _Utterance) -> None:
        """Speech soon after an early end goes on with the same question: cancel the early answer before it plays,
        and let this utterance carry the earlier words."""
        preempted, self._preempted = self._preempted, None
        if preempted is None or self.clock() - preempted.at > self.settings.continuation_s:
            return
        self._withdraw(preempted.request_id)
        utterance.prefix, utterance.replaces = preempted.text, preempted.request_id
        self._continued_by[preempted.request_id] = utterance
        while len(self._continued_by) > 4:  # (bounded: an entry lives until that utterance's final result)
            self._continued_by.pop(next(iter(self._continued_by)))

    def _withdraw(self, request_id: str) -> None:
        """The person went on after an early transcript (or the final result replaced it): its answer is cancelled
        on the device before it plays."""
        log.info("the early answer of %s is cancelled", request_id[-8:])
        self._unconfirmed.pop(request_id, None)
        self._withdrawn.append(request_id)
        self._send(self.topics.control, ControlMessage(action="cancel", request_id=request_id), QOS_AT_MOST_ONCE)

    async def _abort_utterance(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance:
            await utterance.transcriber.abort()
        self.vad.reset()

    async def close(self) -> None:
        """Abort what is still open (a stop-word stream included): no recognizer stream outlives the component."""
        await self._abort_utterance()
        await self.stop_word.close()
        for task in list(self._finishing):
            task.cancel()

    def _check_stop_word(self, text: str) -> None:
        guard = self.echo_guard
        if guard.speaking and self.settings.stop_word in text.replace(" ", ""):
            log.info("stop word heard: cancelling %s", (guard.player_request or "?")[-8:])
            self._send(self.topics.control, ControlMessage(action="cancel", request_id=guard.player_request),
                       QOS_AT_MOST_ONCE)
            guard.stopped()  # do not send twice; the player's idle state follows

    # -- output ------------------------------------------------------------------------------------------------------

    def _send_transcript(self, message: TranscriptMessage, *, unconfirmed_end: int | None = None,
                         final: bool = True) -> None:
        """Publish a transcript. A completed one whose turn is not confirmed yet (``unconfirmed_end``: the frame the
        voice stopped at) is held on the device first: generated now, heard only once the turn is over. ``final``:
        it carries the recognizer's final result (not a preemptive guess)."""
        if message.state == "completed" and unconfirmed_end is not None:
            hangover = self.settings.vad.frames(self.settings.vad.hangover_ms)
            if not final or self.frames_seen - unconfirmed_end < hangover:
                self._send(self.topics.control, ControlMessage(action="hold", request_id=message.request_id),
                           QOS_AT_MOST_ONCE)
                self._unconfirmed[message.request_id] = _Unconfirmed(unconfirmed_end, ended=final,
                                                                     final_settled=final)
                while len(self._unconfirmed) > 8:  # (bounded: a turn settles within seconds)
                    self._unconfirmed.pop(next(iter(self._unconfirmed)))
        self.published.append(message)
        if self.on_transcript is not None:
            self.on_transcript(message)
        self._send(self.topics.transcript, message, QOS_AT_LEAST_ONCE)
        if message.state == "completed":  # the player says sorry by itself if no answer comes (edge/apology.py)
            offline = getattr(self.transport, "connected", True) is False
            self._send(self.topics.control, ControlMessage(action="expect", request_id=message.request_id,
                                                           offline=offline or None), QOS_AT_MOST_ONCE)

    def _could_not_hear(self, request_id: str | None, exc: Exception) -> None:
        """The recognizer failed on an utterance: one log line, an error event, and the player says so aloud. Failing
        every utterance for long (``stt_give_up``) ends the component."""
        log.error("speech recognition failed: %s", exc)
        self._emit_event("error", request_id, detail=f"speech recognition failed: {exc}")
        if request_id:
            self._send(self.topics.control, ControlMessage(action="apologise", request_id=request_id),
                       QOS_AT_MOST_ONCE)
        count, seconds = self.settings.stt_give_up
        self._stt_failures = [*self._stt_failures[-(count - 1):], self.clock()] if count > 1 else [self.clock()]
        if len(self._stt_failures) >= count and self._stt_failures[-1] - self._stt_failures[0] >= seconds:
            self._unhealthy_reason = (f"speech recognition ({self.stt.name}) failed {count} utterances in a row over "
                                      f"{self._stt_failures[-1] - self._stt_failures[0]:.0f} s: {exc}")
            self._unhealthy.set()

    def _emit_event(self, type_: str, request_id: str | None = None, *, detail: str | None = None) -> None:
        self._send(self.topics.event, EventMessage(source="interpreter", type=type_, request_id=request_id,
                                                   detail=detail), QOS_AT_LEAST_ONCE)

    def _send(self, topic: str, message: Message, qos: int) -> None:
        self.outbox.send(topic, encode(message), qos)


def _words(text: str) -> str:
    return " ".join(text.split())


def _letters(text: str) -> str:
    """What was said, without spacing and punctuation (a final that only adds "?" says the same)."""
    return "".join(c for c in text if c.isalnum())


def _joined(prefix: str, text: str) -> str:
    return _words(f"{prefix} {text}")
