"""voice-interpreter: microphone -> VAD -> streaming STT -> transcripts, with an echo guard.

One asyncio loop. Each VAD utterance becomes one request (one UUIDv7 ``requestId``): throttled ``proceeding`` partials
while the person speaks, then exactly one ``completed`` transcript with all of the utterance's finals. Nothing reaches
the recognizer while nobody speaks, and nothing is heard while the device itself speaks (half-duplex), except the
optional stop word, which cancels the answer being played.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voicebot.edge.aec import EchoCanceller, EchoCancellerUnavailable, level_db
from voicebot.edge.audio import AudioError, AudioSource
from voicebot.edge.bargein import BargeInDetector, BargeInSettings
from voicebot.edge.echo_guard import EchoGuard
from voicebot.edge.runner import DEVICE_WAIT_S, ComponentFailed
from voicebot.edge.settings import InterpreterConfig
from voicebot.edge.stopword import StopWordListener
from voicebot.edge.stt import RetryPolicy, SttBackend, SttError, UtteranceTranscriber
from voicebot.edge.turn import (
    Action,
    AskModel,
    Cancel,
    EndUtterance,
    Publish,
    Release,
    Turn,
    TurnDetector,
    TurnSettings,
    letters,
)
from voicebot.edge.turn_model import SmartTurnModel, TurnModelUnavailable
from voicebot.edge.vad import (
    SpeechAudio,
    SpeechEnded,
    SpeechStarted,
    VadEvent,
    VadGate,
    VadSettings,
    webrtc_classifier,
)
from voicebot.messaging import Outbox, Transport, subscribe
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    ControlMessage,
    EventMessage,
    Message,
    PlayerStateMessage,
    ProtocolError,
    ReferenceMessage,
    Topics,
    TranscriptMessage,
    decode,
    encode,
    now_ms,
)

log = logging.getLogger(__name__)

#: On stop, how long the last messages may take to go out (a component must stop within 2 s, broker or not).
STOP_DRAIN_S = 1.0
#: How long after the player's "speaking" its first far-end chunk may come (it decodes the sentence in between).
FAR_END_GRACE_S = 0.5
#: Speech over the device kept until it is found to be a person (or not), besides the pre-roll.
PENDING_KEEP_MS = 1200


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
    barge_in: BargeInSettings = field(default_factory=BargeInSettings)
    """Full duplex (edge/aec.py, edge/bargein.py): speech over the device's own voice stops it."""
    continuation_s: float = 2.0
    """After a turn ended early (edge/turn.py), speech within this long continues it: the early answer is cancelled
    before it plays and the next transcript carries the whole question."""

    def turn_settings(self) -> TurnSettings:
        v = self.vad
        return TurnSettings(mode=v.end_of_turn, hangover_ms=v.hangover_ms,  # type: ignore[arg-type]
                            early_end_ms=v.early_end_ms, preempt_ms=v.preempt_ms, model_ms=v.turn_model_ms,
                            continuation_ms=round(self.continuation_s * 1000), start_frames=v.frames(v.start_ms),
                            max_partials_per_s=self.max_partials_per_s, lang=self.lang)


@dataclass(eq=False)
class _Utterance:
    """What the loop keeps of an utterance besides its turn: the recognizer stream, and for the audio turn model the
    latest seconds of audio (bounded)."""

    turn: Turn
    transcriber: UtteranceTranscriber
    audio: deque[bytes] | None = None
    barged_in: bool = False  # it began over the device's voice and stopped it


class Interpreter:
    def __init__(self, transport: Transport, topics: Topics, source: AudioSource, stt: SttBackend,
                 settings: InterpreterSettings | None = None, *, clock: Callable[[], float] = time.monotonic,
                 stop_word_stt: SttBackend | None = None,
                 on_transcript: Callable[[TranscriptMessage], None] | None = None,
                 turn_model: SmartTurnModel | None = None) -> None:
        self.transport = transport
        self.topics = topics
        self.source = source
        self.stt = stt
        self.stop_word_stt = stop_word_stt or stt
        self.on_transcript = on_transcript  # (the benchmark times each transcript from the moment it goes out)
        self.settings = settings or InterpreterSettings()
        self.clock = clock
        self.vad = VadGate(self.settings.vad)
        self.turns = TurnDetector(self.settings.turn_settings())  # when a turn ends, and what goes out then
        self.turn_model = turn_model  # Smart Turn v3, loaded when the end of turn uses it
        self.turn_model_seconds: deque[float] = deque(maxlen=256)  # its latest decision times (the benchmark's)
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
        self._end_now = False  # the turn detector ended the utterance: the VAD ends it after this frame
        self._over_the_device = False  # the barge-in detector's latest verdict
        self._answer_heard = False  # the player spoke since the last utterance started
        self.outbox = Outbox(transport, "interpreter")
        self._stt_failures: list[float] = []  # when each utterance in a row failed in the recognizer (bounded)
        self._unhealthy = asyncio.Event()
        self._unhealthy_reason = ""
        self._failures_seen: set[str] = set()  # kinds of background failure already logged with a traceback
        self._turn_model_problem = ""
        self._load_turn_model()
        self.barge = BargeInDetector(s.barge_in)
        self.barge_ins = 0
        self.barged_in_at: float | None = None  # (monotonic) the latest barge-in: the benchmark's
        self.aec: EchoCanceller | None = None
        # (its own VAD for the linear filter's output: a second stream through one classifier would mix their state)
        self._linear_vad = webrtc_classifier(self.settings.vad.aggressiveness)
        self._aec_problem = ""
        self._load_aec()
        self._pending: list[bytes] | None = None  # speech over the device's voice, until it is a barge-in
        self._bad_references = 0
        self._far_end_promised: float | None = None  # when the player said it speaks, its far end not yet here

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set or the source ends (a WAV file); then send everything still pending."""
        loop = asyncio.get_running_loop()
        await subscribe(self.transport, self.topics.player_state, QOS_AT_MOST_ONCE,
                        lambda _t, payload: loop.call_soon_threadsafe(self._on_player_state, payload))
        await subscribe(self.transport, self.topics.reference, QOS_AT_MOST_ONCE,
                        lambda _t, payload: loop.call_soon_threadsafe(self._on_reference, payload))
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
            self._act(self.turns.input_ended(self._now()))  # nothing more is said: every turn is over
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
            stop_word=s.stop_word if s.stop_word_enabled else "", end_of_turn=vad.end_of_turn,
            turn_model_ms=vad.turn_model_ms, barge_in=s.barge_in.enabled, barge_in_min_ms=s.barge_in.min_speech_ms,
            barge_in_echo_margin_db=s.barge_in.echo_margin_db, barge_in_min_level_dbfs=s.barge_in.min_level_dbfs,
        ).merged(config, problems)
        for line in problems:
            self._emit_event("error", detail=f"configuration: {line}")
        new_vad = replace(vad, engine=new.vad_engine, aggressiveness=new.vad_aggressiveness,
                          preroll_ms=new.preroll_ms, hangover_ms=new.hangover_ms, max_utterance_s=new.max_utterance_s,
                          early_end_ms=new.early_end_ms, preempt_ms=new.preempt_ms,
                          quiet_margin_db=new.quiet_margin_db, end_of_turn=new.end_of_turn,
                          turn_model_ms=new.turn_model_ms)
        barge = replace(s.barge_in, enabled=new.barge_in, min_speech_ms=new.barge_in_min_ms,
                        echo_margin_db=new.barge_in_echo_margin_db, min_level_dbfs=new.barge_in_min_level_dbfs)
        self.settings = replace(s, vad=new_vad, echo_tail_s=new.echo_tail_s, barge_in=barge,
                                stop_word_enabled=bool(new.stop_word.strip()), stop_word=new.stop_word.strip() or "그만")
        self.barge = BargeInDetector(barge)
        self._load_aec()
        self.echo_guard.echo_tail_s = new.echo_tail_s
        self.turns.settings = self.settings.turn_settings()  # (the detector's settings apply from the next frame)
        self._load_turn_model()
        if new_vad != vad:
            try:
                self._next_vad = VadGate(new_vad)
            except (RuntimeError, ValueError) as exc:  # e.g. silero chosen but not installed
                log.error("interpreter: VAD settings %s not applied: %s", new_vad, exc)
                self.settings = replace(self.settings, vad=vad)
                return
            if not self.vad.in_speech:
                self.vad, self._next_vad = self._next_vad, None

    def _load_turn_model(self) -> None:
        """Load Smart Turn v3 when the end of turn uses it. Where it cannot run (no onnxruntime, no weights), the
        text cue decides instead, and the reason is reported once."""
        if self.turn_model is not None or not self.turns.settings.uses_model:
            return
        try:
            self.turn_model = SmartTurnModel()
        except TurnModelUnavailable as exc:
            mode = self.turns.settings.mode
            self.turns.settings = replace(self.turns.settings, mode="text")
            if str(exc) != self._turn_model_problem:
                self._turn_model_problem = str(exc)
                log.error("interpreter: EndOfTurn %s cannot be used (%s); the Korean text cue decides instead",
                          mode, exc)
                self._emit_event("error", detail=f"EndOfTurn {mode} unavailable: {exc}; using text")

    def _load_aec(self) -> None:
        """Echo cancellation for barge-in. Where it cannot run (no livekit), the half-duplex echo guard stays and the
        reason is reported once."""
        if self.aec is not None or not self.settings.barge_in.enabled:
            return
        try:
            self.aec = EchoCanceller()
        except EchoCancellerUnavailable as exc:
            if str(exc) != self._aec_problem:
                self._aec_problem = str(exc)
                log.error("interpreter: BargeIn cannot be used (%s); the microphone is muted while the device speaks",
                          exc)
                self._emit_event("error", detail=f"BargeIn unavailable: {exc}; half-duplex")

    def _on_reference(self, payload: bytes) -> None:
        """What the player plays, for the echo canceller. A malformed or implausibly timed chunk is dropped (logged
        once per 100)."""
        if self.aec is None:
            return
        now = time.monotonic()
        try:
            message = decode(ReferenceMessage, payload)
            samples = np.frombuffer(base64.b64decode(message.pcm, validate=True), dtype="<i2")
            if not -5.0 < message.start - now < 130.0:  # (a sentence is sent when it starts: up to 2 minutes ahead)
                raise ValueError(f"start {message.start - now:+.1f} s from now")
        except (ProtocolError, ValueError, binascii.Error) as exc:
            if self._bad_references % 100 == 0:
                log.warning("interpreter: bad reference audio dropped (%s)", str(exc)[:200])
            self._bad_references += 1
            return
        self._far_end_promised = None
        self.aec.reference(message.start, samples, now)

    def duplex(self) -> bool:
        """Full duplex now: barge-in on, the echo canceller running and the player's far end arriving (without it,
        the device's own voice would reach the recognizer: the half-duplex guard applies)."""
        return (self.aec is not None and self.settings.barge_in.enabled
                and time.monotonic() - self.aec.far_until < 1.0)

    def awaiting_far_end(self) -> bool:
        """The player said it speaks, and that it sends its far end, which has not arrived yet (its state goes out
        before the sentence is decoded). It sends the far end before it plays, so the microphone still hears only the
        room: an utterance under way goes on. If none arrives within ``FAR_END_GRACE_S``, half-duplex."""
        promised = self._far_end_promised
        if promised is None or self.aec is None or not self.settings.barge_in.enabled or not self.echo_guard.speaking:
            return False
        if self.clock() - promised < FAR_END_GRACE_S:
            return True
        log.warning("interpreter: the player speaks but sent no far end within %.1f s; half-duplex for this answer",
                    FAR_END_GRACE_S)
        self._far_end_promised = None
        return False

    # -- echo guard --------------------------------------------------------------------------------------------------

    def _on_player_state(self, payload: bytes) -> None:
        try:
            state = decode(PlayerStateMessage, payload)
        except ProtocolError as exc:
            log.warning("interpreter: bad player state: %s", exc)
            return
        speaking = state.state == "speaking"
        if not speaking:
            self._far_end_promised = None
        elif state.far_end and not self.echo_guard.speaking and not self.duplex():
            self._far_end_promised = self.clock()
        self.echo_guard.on_player_state(speaking, state.request_id, self.clock())
        if state.state == "speaking":
            self._answer_heard = True  # (what the person says after it is a new question; over it, maybe not)
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

    def _now(self) -> int:
        """The audio time (ms of frames heard): the turn detector's clock."""
        return self.frames_seen * self.settings.vad.frame_ms

    async def process(self, frame: bytes) -> None:
        self.frames_seen += 1
        duplex = self.duplex()
        raw = frame
        if duplex and self.aec is not None:  # the device is speaking (or just was): its own voice taken out
            frame_s = self.settings.vad.frame_ms / 1000
            frame = self.aec.frame(frame, getattr(self.source, "last_captured_at", None) or time.monotonic() - frame_s)
        muted = self.muted() and not duplex and not self.awaiting_far_end()
        # While the stop word is being said, all of it goes to the stop-word listener, even after the player has
        # stopped: the rest of "그만" must not become a question.
        if muted or self.stop_word.active:
            if self.vad.in_speech or self._utterance:
                await self._abort_utterance()  # the device started talking: what follows would be its own voice
            self.vad.reset()
            listening = self.stop_word.active or (self.settings.stop_word_enabled and self.echo_guard.speaking)
            if listening and await self.stop_word.process(frame):  # it ended: the room may still ring with it
                self.echo_guard.extend(self.clock())
        else:
            events = self.vad.process(frame)
            if self.aec is not None and (self._pending is not None or (duplex and self.echo_guard.speaking)):
                # (a pending utterance stays pending until it is a person, even if the device stopped meanwhile)
                mic_db, out_db = (self.aec.mic_db, self.aec.out_db) if duplex else (level_db(raw), level_db(raw))
                linear = self.aec.linear_view(self._linear_vad) if duplex else None
                self._over_the_device = self.barge.frame(self.vad.last_voiced, mic_db, out_db,
                                                         strictness=self.aec.strictness if duplex else 1, linear=linear)
            else:
                self.barge.reset()
                self._over_the_device = False
            for event in events:
                await self._on_vad(event)
        if self.turns.holding and not self.vad.voice_pending:  # (a voice that may start an utterance: not yet)
            self._act(self.turns.tick(self._now()))

    async def _on_vad(self, event: VadEvent) -> None:
        try:
            if isinstance(event, SpeechStarted):
                if self.duplex() and self.echo_guard.speaking:
                    # Over the device's voice: nothing reaches the recognizer until it is a person (a barge-in).
                    self._pending = list(event.preroll)
                    return
                await self._start_utterance(event.preroll)
            elif isinstance(event, SpeechAudio) and self._pending is not None:
                self._pending.append(event.frame)
                # Not seconds of the device's own voice that held the VAD open before they spoke go to the
                # recognizer; but their first words do, though a canceller still learning the room (its first
                # second) may take that long to let enough of the person through.
                del self._pending[:-self.settings.vad.frames(self.settings.vad.preroll_ms + PENDING_KEEP_MS)]
                if self._over_the_device:
                    await self._barge_in()
            elif isinstance(event, SpeechEnded) and self._pending is not None:
                self._pending = None  # the device's own voice, or a sound too short to stop it: dropped
            elif isinstance(event, SpeechAudio) and self._utterance:
                if self._over_the_device and self.echo_guard.speaking:
                    self._stop_answer()  # the device began an answer while the person was talking: it gives way
                utterance = self._utterance
                self.stt_bytes += len(event.frame)
                await utterance.transcriber.send(event.frame)
                if utterance.audio is not None:
                    utterance.audio.append(event.frame)
                self._act(self.turns.frame(utterance.turn, self._now(), voiced=self.vad.hears_voice,
                                           silent_ms=self.vad.voice_silent_ms, vad_silent_ms=self.vad.silent_ms))
                if self._end_now:
                    self._end_now = False
                    for ended in self.vad.end():
                        await self._on_vad(ended)
            elif isinstance(event, SpeechEnded) and self._utterance:
                utterance, self._utterance = self._utterance, None
                if self._next_vad is not None:  # new VAD settings arrived mid-utterance
                    self.vad, self._next_vad = self._next_vad, None
                speech_end = now_ms() - event.trailing_silence_ms
                early = event.reason == "early"
                voice_end = self._now() - event.trailing_silence_ms
                self._act(self.turns.ended(utterance.turn, self._now(), early=early, voice_end=voice_end))
                finish = self._finish(utterance, speech_end, after=self._previous)
                if getattr(self.stt, "runs_locally", False):
                    # A local recognizer's final result is milliseconds of CPU (Vosk): wait for it, so that only one
                    # recognizer (tens of MB each) is ever alive. A network one may take seconds: not on this loop.
                    await finish
                    self._previous = None
                else:
                    self._previous = self._in_background(finish)
        except SttError as exc:
            self._could_not_hear(self._utterance.turn.request_id if self._utterance else None, exc)
            await self._abort_utterance()

    async def _start_utterance(self, preroll: list[bytes], *, barged_in: bool = False,
                               cutting: str | None = None) -> None:
        if self._answer_heard and not barged_in:
            # an answer was heard since the last early end: what the person says now is a new question (words over
            # an early answer, a barge-in, may still finish its question: edge/turn.py)
            self.turns.answer_heard()
        self._answer_heard = False
        turn, actions = self.turns.started(self._now(), cutting=cutting)
        self._act(actions)
        utterance = _Utterance(turn, UtteranceTranscriber(
            self.stt, on_partial=lambda text: self._act(self.turns.partial(turn, text, self._now())),
            retry=self.settings.retry), barged_in=barged_in)
        if self.turn_model is not None and self.turns.settings.uses_model:
            utterance.audio = deque(preroll, maxlen=8000 // self.settings.vad.frame_ms)
        self._utterance = utterance
        self.utterances += 1
        await utterance.transcriber.start()
        for frame in preroll:
            self.stt_bytes += len(frame)
            await utterance.transcriber.send(frame)

    async def _barge_in(self) -> None:
        """A person is talking over the device (or it stopped by itself meanwhile): stop the answer, and what they
        say is the next question (or, over an early answer, the rest of its question: edge/turn.py)."""
        frames, self._pending = self._pending or [], None
        cutting = self._stop_answer()
        await self._start_utterance(frames, barged_in=True, cutting=cutting)

    def _stop_answer(self) -> str | None:
        """The person talks over the device: the answer playing (if it still is) stops. Returns what was cut."""
        guard = self.echo_guard
        cutting = guard.player_request if guard.speaking else None
        if guard.speaking:
            self.barge_ins += 1
            self.barged_in_at = time.monotonic()
            log.info("barge-in: stopping %s", (guard.player_request or "?")[-8:])
            self._send(self.topics.control, ControlMessage(action="cancel", request_id=guard.player_request),
                       QOS_AT_MOST_ONCE)
            self._emit_event("barge_in", guard.player_request)
            guard.stopped()
        self.barge.reset()
        self._over_the_device = False
        return cutting

    async def _finish(self, utterance: _Utterance, speech_end: int, *, after: asyncio.Task[None] | None) -> None:
        """The recognizer's final result, handed to the turn detector in the order the utterances were said."""
        try:
            text = await utterance.transcriber.end()
            if after is not None:  # recognised in parallel, published in the order they were said
                await asyncio.wait({after})
        except SttError as exc:
            self._could_not_hear(utterance.turn.request_id, exc)
            await utterance.transcriber.abort()
            return
        self._stt_failures.clear()  # the recognizer works
        if utterance.barged_in and text and letters(text) == letters(self.settings.stop_word):
            log.info("the stop word over the device: the answer stopped, nothing is asked")
            self.turns.aborted(utterance.turn)
            return
        self._act(self.turns.final(utterance.turn, text, self._now(), speech_end_ts=speech_end))

    def _act(self, actions: list[Action]) -> None:
        """Carry out what the turn detector decided."""
        for action in actions:
            if isinstance(action, Publish):
                self._send_transcript(action.message, hold=action.hold)
            elif isinstance(action, Cancel):
                self._send(self.topics.control, ControlMessage(action="cancel", request_id=action.request_id),
                           QOS_AT_MOST_ONCE)
            elif isinstance(action, Release):
                self._send(self.topics.control, ControlMessage(action="release", request_id=action.request_id),
                           QOS_AT_MOST_ONCE)
            elif isinstance(action, EndUtterance):
                log.debug("end of turn: %s", action.why)
                self._end_now = True  # (the VAD ends the utterance after this frame)
            elif isinstance(action, AskModel):
                self._ask_turn_model(action.turn)

    def _ask_turn_model(self, turn: Turn) -> None:
        """Run the audio turn model beside the microphone loop (tens of ms on a Pi's core) on the utterance so far."""
        utterance = self._utterance
        if self.turn_model is None or utterance is None or utterance.turn is not turn or utterance.audio is None:
            return
        pcm, model = b"".join(utterance.audio), self.turn_model

        async def ask() -> None:
            verdict = await asyncio.to_thread(model.predict, pcm)
            self.turn_model_seconds.append(verdict.seconds)
            self.turns.model_verdict(turn, verdict.complete)

        self._in_background(ask())

    async def _abort_utterance(self) -> None:
        utterance, self._utterance = self._utterance, None
        self.turns.aborted(utterance.turn if utterance else None)
        self._end_now = False
        self._pending = None
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

    def _send_transcript(self, message: TranscriptMessage, *, hold: bool = False) -> None:
        """Publish a transcript; ``hold``: its turn is not confirmed yet, so the player holds the answer (generated
        now, heard only once the turn is over: ``release``)."""
        if hold:
            self._send(self.topics.control, ControlMessage(action="hold", request_id=message.request_id),
                       QOS_AT_MOST_ONCE)
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
