"""voice-player: plays answer sentences strictly in order, the first one long before the answer is finished.

``Player`` is the small asyncio loop around ``PlaybackQueue`` (edge/playback.py, which decides what to play next): it
receives audio, drives a sink, and reports what happened. One bad message never stops it: whatever a message
does wrong is logged once and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from voicebot.edge.apology import ApologyWatch, Clip
from voicebot.edge.audio import AudioError, AudioSink, apply_volume, decode_sentence, to_rate
from voicebot.edge.clips import CLIPS
from voicebot.edge.playback import Action, Finished, Interrupted, Play, PlaybackQueue, Skip
from voicebot.edge.reference import ReferencePublisher
from voicebot.edge.runner import DEVICE_WAIT_S, ComponentFailed
from voicebot.edge.settings import PlayerConfig
from voicebot.messaging import Outbox, Transport, handoff_to_loop, subscribe
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    AudioMessage,
    CommandMessage,
    ControlMessage,
    EventMessage,
    Message,
    PlayerStateMessage,
    ProtocolError,
    SentenceAudio,
    Topics,
    decode,
    encode,
    now_ms,
)

log = logging.getLogger(__name__)

#: Recent events kept for tests and the benchmark (the events themselves go out on the event topic).
KEEP_EVENTS = 256
#: On stop, how long the last events may take to go out (a component must stop within 2 s, broker or not).
STOP_DRAIN_S = 1.0
#: Sentences up to this size are decoded on the loop (well under a millisecond); bigger ones in a thread.
INLINE_DECODE_BYTES = 48_000


# --------------------------------------------------------------------------------------------------------------------
# The player loop
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayerSettings:
    gap_timeout_s: float = PlayerConfig.defaults().gap_timeout_s
    """How long to wait for a missing sentence before skipping it."""
    volume: float = PlayerConfig.defaults().volume
    """0.0 to 1.0, applied to every sample."""
    state_heartbeat_s: float = 2.0
    """While speaking, the state is sent again this often: the interpreter unmutes when it stops hearing it (a lost
    "idle" or a dead player must not leave the device deaf)."""
    local_apology: bool = PlayerConfig.defaults().local_apology
    """Say a built-in clip when the cloud cannot answer (see edge/apology.py)."""
    no_answer_s: float = 10.0
    """A completed question with no audio and no event for this long: the cloud is unreachable, say so."""
    error_wait_s: float = 2.0
    """An error reported for a turn and no audio for it within this long: the cloud's apology is not coming."""
    output_retry_s: float = 2.0
    """How often a failed audio output is opened again (a device plugged back in is found at the next try)."""
    output_give_up_s: float = DEVICE_WAIT_S
    """An audio output that cannot be reopened for this long ends the component (Greengrass restarts it)."""


class Player:
    """One asyncio loop: messages in (handed off from transport threads), sink out, events and local state out."""

    def __init__(self, transport: Transport, topics: Topics, sink: AudioSink, settings: PlayerSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[EventMessage], None] | None = None,
                 reopen: Callable[[], AudioSink] | None = None, clips: Mapping[Clip, bytes] | None = None) -> None:
        """``reopen`` opens the audio output again after it failed (a USB speaker unplugged and plugged back):
        until it succeeds, sentences are skipped at once instead of waiting on a dead device. ``clips`` are the WAV
        bytes of the local apologies (edge/clips.py); without them the player cannot apologise by itself."""
        self.transport = transport
        self.topics = topics
        self.sink = sink
        self.settings = settings or PlayerSettings()
        self.volume = self.settings.volume
        self.queue = PlaybackQueue(gap_timeout_s=self.settings.gap_timeout_s, joined_at=self._wall_ms())
        self.apology = ApologyWatch(no_answer_s=self.settings.no_answer_s, error_wait_s=self.settings.error_wait_s,
                                    enabled=self.settings.local_apology)
        self.clips = dict(clips or {})
        self._clip: str | None = None  # the clip being played (the playback task is a clip's, not a sentence's)
        self.clock = clock
        self.on_event = on_event
        self.state = ""  # unknown until the first state is published
        self._state_sent_at = float("-inf")
        self.ready = asyncio.Event()
        # The latest events, for tests and the benchmark; bounded: a device runs for months.
        self.events: deque[EventMessage] = deque(maxlen=KEEP_EVENTS)
        self.timeline: deque[tuple[float, EventMessage]] = deque(maxlen=KEEP_EVENTS)  # (clock, event)
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.outbox = Outbox(transport, "player")
        self._playing: asyncio.Task[None] | None = None
        self._playing_sentence: SentenceAudio | None = None
        self._cancelled: set[asyncio.Task[None]] = set()  # interrupted playbacks, kept until they have wound down
        self.reopen = reopen
        self._reopening: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None  # is the cloud reachable? (asked when a question went out)
        self._failures_seen: set[str] = set()  # kinds of loop failure already logged with a traceback (bounded)
        self.sink_down_for = 0.0  # seconds the output has failed to reopen (health: the component gives up)
        self._tap_sink()

    @staticmethod
    def _wall_ms() -> int:
        return now_ms()

    def _tap_sink(self) -> None:
        """What the sink is about to play also goes to the interpreter's echo canceller (device-local), stamped with
        when it is heard, so a person can talk over the device (edge/aec.py)."""
        self.reference = ReferencePublisher(
            lambda message: self._send(self.topics.reference, message, QOS_AT_MOST_ONCE),
            rate=self.sink.sample_rate)

    def apply_config(self, config: Mapping[str, Any]) -> None:
        """Live settings from the component configuration; a bad value or an unknown key keeps the current one and
        is reported once (a log line and an ``error`` event naming the key)."""
        problems: list[str] = []
        new = PlayerConfig(volume=self.volume, gap_timeout_s=self.queue.gap_timeout_s,
                           local_apology=self.apology.enabled).merged(config, problems)
        self.volume, self.queue.gap_timeout_s, self.apology.enabled = new.volume, new.gap_timeout_s, new.local_apology
        for line in problems:
            self._emit("error", detail=f"configuration: {line}")

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        handler = handoff_to_loop(loop, self._inbox)
        for topic in (self.topics.audio, self.topics.event, self.topics.command):
            await subscribe(self.transport, topic, QOS_AT_LEAST_ONCE, handler)
        await subscribe(self.transport, self.topics.control, QOS_AT_MOST_ONCE, handler)
        self.queue.joined_at = self._wall_ms()  # from now on nothing sent to this device passes it by
        self._set_state("idle", None)
        self.ready.set()
        log.info("player ready on %s", self.topics.audio)
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._contained(self._step)
                self._contained(self._heartbeat)
                wakes = [w for w in (self.queue.wake_at(), self._next_heartbeat(), self.apology.wake_at())
                         if w is not None]
                timeout = max(0.0, min(wakes) - self.clock()) if wakes else None
                getter = asyncio.create_task(self._inbox.get())
                waiters: set[asyncio.Future] = {getter, stopper}
                if self._playing:
                    waiters.add(self._playing)
                if self._reopening:
                    waiters.add(self._reopening)
                if self._probe:
                    waiters.add(self._probe)
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    self._on_message(*getter.result())
                else:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                if self._playing and self._playing.done():
                    self._contained(self._finish_playing)
                if self._probe and self._probe.done():
                    if not self._probe.cancelled() and self._probe.exception() is not None:
                        log.warning("player: connectivity check failed: %s", self._probe.exception())
                    self._probe = None
                if self._reopening and self._reopening.done() and not self._reopening.cancelled():
                    failure = self._reopening.exception()
                    self._reopening = None
                    if isinstance(failure, ComponentFailed):
                        raise failure
        finally:
            stopper.cancel()
            await self._stop_playing()
            self._set_state("idle", None)
            await self.outbox.drain(STOP_DRAIN_S)

    def _contained(self, step: Callable[[], None]) -> None:
        """One step of the loop; a bug in it is logged with its traceback (once per kind) and reported, and the loop
        goes on: a player that stops looping is a mute device."""
        try:
            step()
        except Exception as exc:
            kind = f"{type(exc).__name__} in {getattr(step, '__name__', 'step')}"
            if kind not in self._failures_seen:
                self._failures_seen.add(kind)
                log.exception("player: %s; the loop goes on", kind)
                self._emit("error", detail=f"player: {kind}: {exc}")
            if self._playing is not None and self._playing.done():
                self._playing, self._playing_sentence, self._clip = None, None, None

    # -- inputs ------------------------------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = self.clock()
        try:
            if topic == self.topics.audio:
                message = decode(AudioMessage, payload)
                if message.audio:  # (an answer's empty closing marker is no sound)
                    self.apology.audio(message.request_id, now)
                else:
                    self.apology.heard_of(message.request_id, now)
                self._apply(self.queue.add(message, now))
            elif topic == self.topics.event:
                event = decode(EventMessage, payload)
                if event.source != "player":
                    self.apology.heard_of(event.request_id, now)
                    if event.type == "error":
                        self.apology.error(event.request_id, now)
                if event.type == "error" and event.source == "speech" and event.request_id and event.seq is not None:
                    self._apply(self.queue.fail(event.request_id, event.seq, event.last, now))
            elif topic == self.topics.control:
                self._on_control(decode(ControlMessage, payload), now)
            elif topic == self.topics.command:
                self._on_command(decode(CommandMessage, payload), now)
        except ProtocolError as exc:
            log.warning("player: bad message on %s: %s", topic, str(exc)[:300])
            if topic != self.topics.event:  # never answer a bad event with an event (no loops)
                self._emit("error", detail=f"bad message on {topic.rsplit('/', 1)[-1]}: {exc}")
        except Exception as exc:  # whatever one message does wrong, the player goes on with the next
            log.error("player: message on %s could not be handled: %s: %s", topic, type(exc).__name__, str(exc)[:300])

    def _on_control(self, control: ControlMessage, now: float) -> None:
        if control.action == "cancel":
            self.apology.forget(control.request_id)
            self._apply(self.queue.cancel(control.request_id, now))
        elif control.action == "expect" and control.request_id:
            self.apology.expect(control.request_id, now, offline=bool(control.offline))
            reachable = getattr(self.transport, "reachable", None)
            if reachable is not None and self.apology.enabled and not control.offline and self._probe is None:
                self._probe = asyncio.create_task(self._check_online(control.request_id, reachable))
        elif control.action == "hold" and control.request_id:
            self.queue.hold(control.request_id, now)
        elif control.action == "release" and control.request_id:
            self.queue.release(control.request_id, now)
            self._apply([])  # (the state: speaking once it plays)
        elif control.action == "apologise" and control.request_id:
            self.apology.failed(control.request_id, now, "offline" if control.offline else "trouble")

    async def _check_online(self, request_id: str, reachable: Callable[[], bool | None]) -> None:
        """A question went out: if the cloud cannot be reached at all, say so now rather than after the wait."""
        if await asyncio.to_thread(reachable) is False:
            log.warning("player: AWS IoT Core is not reachable; the question %s cannot be answered", request_id[-8:])
            self.apology.failed(request_id, self.clock(), "offline")

    def _on_command(self, command: CommandMessage, now: float) -> None:
        if command.action == "cancel":
            self._apply(self.queue.cancel(command.request_id, now))
        elif command.action == "volume" and command.value is not None:
            self.volume = command.value
            self._emit("volume", detail=f"{command.value:.2f}")

    # -- queue actions -----------------------------------------------------------------------------------------------

    def _step(self) -> None:
        if self._playing is None:  # (a Play starts a playback task even for a sentence that will not decode)
            self._apply(self.queue.next(self.clock()))
        if self._playing is None and not self.queue.speaking:  # never over answer audio
            clip = self.apology.due(self.clock())
            if clip is not None:
                self._start_clip(clip)

    def _start_clip(self, clip: Clip) -> None:
        request_id = self.apology.request_id
        data = self.clips.get(clip)
        log.warning("player: no answer can be heard for %s; saying the local %r clip", (request_id or "?")[-8:], clip)
        self._emit("apology", request_id, detail=clip if data else f"{clip} (no clip installed: nothing to say)")
        if not data:
            return
        sentence = SentenceAudio(request_id=request_id or "local", seq=0, last=True, text=CLIPS[clip], format="wav",
                                 sample_rate=16_000, data=data)
        self._clip = clip
        self._playing_sentence = None
        self._playing = asyncio.create_task(self._play(sentence, report=False))
        self._set_state("speaking", request_id)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Play):
                self._start_playing(action.sentence)
            elif isinstance(action, Skip):
                log.warning("player: skipped %s seq %d (%s)", action.request_id[-8:], action.seq, action.reason)
                self._emit("skipped", action.request_id, action.seq, detail=action.reason)
            elif isinstance(action, Interrupted):
                self._interrupt()
                self._emit("interrupted" if action.reason == "superseded" else "cancelled", action.request_id,
                           detail=action.reason)
            elif isinstance(action, Finished):
                self._emit("played", action.request_id, last=True, detail=action.reason)
        self._set_state("speaking" if self.queue.speaking or self._clip else "idle", self.queue.active_request)

    def _start_playing(self, sentence: SentenceAudio) -> None:
        self._playing_sentence = sentence
        self._playing = asyncio.create_task(self._play(sentence))

    async def _play(self, sentence: SentenceAudio, *, report: bool = True) -> bool:
        """Decode, then play. False when the sentence could not be decoded: it is skipped. ``report``: events for
        an answer's sentence (a local clip reports itself)."""
        if self._reopening is not None:
            if report:
                self._emit("skipped", sentence.request_id, sentence.seq, detail="audio output unavailable")
            return False
        try:
            if len(sentence.data) > INLINE_DECODE_BYTES:  # a long OGG takes tens of ms to decode: not on the loop
                samples = await asyncio.to_thread(self._prepare, sentence, self.volume)
            else:  # a short one is quicker than the hand-off to a thread (a hundred players in one process)
                samples = self._prepare(sentence, self.volume)
        except AudioError as exc:
            log.error("player: %s", exc)
            self._emit("skipped", sentence.request_id, sentence.seq, detail=str(exc))
            return False
        if samples.size and report:
            self._emit("playing", sentence.request_id, sentence.seq, last=sentence.last)
        latency = float(getattr(self.sink, "latency_s", 0.0))
        send_rest = self.reference.sentence(time.monotonic() + latency, samples)
        asyncio.get_running_loop().call_soon(send_rest)  # (runs once playback has started)
        try:
            await self.sink.play(samples)
        except asyncio.CancelledError:
            self.reference.cut(time.monotonic() + latency)
            raise
        return bool(sentence.data)

    def _prepare(self, sentence: SentenceAudio, volume: float) -> Any:
        samples, rate = decode_sentence(sentence)
        return apply_volume(to_rate(samples, rate, self.sink.sample_rate), volume)

    def _finish_playing(self) -> None:
        task, sentence, clip = self._playing, self._playing_sentence, self._clip
        self._playing, self._playing_sentence, self._clip = None, None, None
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("player: sink failed: %s", task.exception())
            self._emit("error", detail=f"audio output failed: {task.exception()}")
            if self.reopen is not None and self._reopening is None:
                self._reopening = asyncio.create_task(self._reopen_sink())
        elif task is not None and not task.cancelled() and task.result() and sentence is not None:
            self._emit("played", sentence.request_id, sentence.seq, last=sentence.last)
        if clip is None:
            self.queue.playback_done(self.clock())
        else:
            if task is not None and not task.cancelled() and task.exception() is None:
                self._emit("played", self.apology.request_id, detail=f"{clip} clip")
            self._set_state("speaking" if self.queue.speaking else "idle", self.queue.active_request)

    def _interrupt(self) -> None:
        task = self._playing
        if task is not None:
            task.cancel()  # sinks stop within one 20 ms block
            self._cancelled.add(task)
            task.add_done_callback(self._cancelled.discard)
            self._playing, self._playing_sentence, self._clip = None, None, None

    async def _reopen_sink(self) -> None:
        """Close the failed output and open it again, retrying quietly until it is back. Whatever the audio library
        raises (``sounddevice.PortAudioError`` is a plain Exception) is a reason to try again, never the end of the
        loop: a reopen task that died would leave every later answer skipped."""
        assert self.reopen is not None
        retry_s = self.settings.output_retry_s
        tries = 0
        try:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.sink.close)
            while True:
                try:
                    self.sink = await asyncio.to_thread(self.reopen)
                    self._tap_sink()
                    break
                except Exception as exc:
                    tries += 1
                    if tries == 1:
                        log.error("player: audio output cannot be reopened yet (%s: %s); retrying every %.1f s",
                                  type(exc).__name__, exc, retry_s)
                        self._emit("error", detail=f"audio output unavailable: {exc}")
                    self.sink_down_for = tries * retry_s
                    if self.sink_down_for >= self.settings.output_give_up_s:
                        raise ComponentFailed(f"the audio output could not be reopened for "
                                              f"{self.sink_down_for:.0f} s: {type(exc).__name__}: {exc}") from exc
                    await asyncio.sleep(retry_s)  # a device plugged back in is found at the next try
            log.info("player: audio output is back")
            if tries:
                self._emit("started", detail="audio output is back")
        except ComponentFailed:
            raise  # (the loop raises it: the component ends and Greengrass restarts it)
        finally:
            self.sink_down_for = 0.0
        self._reopening = None

    async def _stop_playing(self) -> None:
        if self._reopening is not None:
            self._reopening.cancel()
        if self._probe is not None:
            self._probe.cancel()
        self._interrupt()
        for task in list(self._cancelled):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- outputs -----------------------------------------------------------------------------------------------------

    def _emit(self, type_: str, request_id: str | None = None, seq: int | None = None, *, last: bool | None = None,
              detail: str | None = None) -> None:
        event = EventMessage(source="player", type=type_, request_id=request_id, seq=seq, last=last, detail=detail)
        self.events.append(event)
        self.timeline.append((self.clock(), event))
        if self.on_event:
            self.on_event(event)
        self._send(self.topics.event, event, QOS_AT_LEAST_ONCE)

    def _set_state(self, state: str, request_id: str | None) -> None:
        if state != self.state:
            self.state = state
            self._send_state(request_id)

    def _send_state(self, request_id: str | None) -> None:
        self._state_sent_at = self.clock()
        self._send(self.topics.player_state, PlayerStateMessage(state=self.state, request_id=request_id, far_end=True),
                   QOS_AT_MOST_ONCE)

    def _next_heartbeat(self) -> float | None:
        return self._state_sent_at + self.settings.state_heartbeat_s if self.state == "speaking" else None

    def _heartbeat(self) -> None:
        due = self._next_heartbeat()
        if due is not None and self.clock() >= due:
            self._send_state(self.queue.active_request)

    def _send(self, topic: str, message: Message, qos: int) -> None:
        self.outbox.send(topic, encode(message), qos)
