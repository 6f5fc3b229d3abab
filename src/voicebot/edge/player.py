"""voice-player: plays answer sentences strictly in order, the first one long before the answer is finished.

``PlaybackQueue`` is pure (no I/O, time passed in): it decides what to play next. ``Player`` is the small asyncio loop
around it that receives audio, drives a sink, and reports what happened.

Rules: strict ``seq`` order per request; duplicates ignored; parts reassembled; a newer ``requestId`` stops the current
request and drops the rest of it; a missing ``seq`` is skipped after the gap timeout (or at once when the speech side
reports it failed); ``last`` ends the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voicebot.edge.audio import AudioError, AudioSink, apply_volume, decode_sentence, to_rate
from voicebot.edge.transport import Outbox, Transport, handoff_to_loop
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    AudioAssembler,
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
    is_newer,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# What the queue tells the loop to do
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Play:
    sentence: SentenceAudio


@dataclass(frozen=True)
class Skip:
    request_id: str
    seq: int
    reason: str


@dataclass(frozen=True)
class Finished:
    request_id: str
    reason: str = "last"


@dataclass(frozen=True)
class Interrupted:
    request_id: str
    reason: str


Action = Play | Skip | Finished | Interrupted


@dataclass
class _Request:
    request_id: str
    waiting_since: float
    next_seq: int = 0
    ready: dict[int, SentenceAudio] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    last_seq: int | None = None
    playing: bool = False


class PlaybackQueue:
    """Decides what to play next. Pure: every method takes the current time and returns actions."""

    def __init__(self, *, gap_timeout_s: float = 3.0, remember: int = 256) -> None:
        self.gap_timeout_s = gap_timeout_s
        self._assembler = AudioAssembler()
        self._current: _Request | None = None
        self._newest: str | None = None  # newest request id seen (active or retired)
        self._retired: deque[str] = deque(maxlen=remember)

    @property
    def active_request(self) -> str | None:
        return self._current.request_id if self._current else None

    @property
    def playing(self) -> bool:
        return bool(self._current and self._current.playing)

    def _is_stale(self, request_id: str) -> bool:
        return request_id in self._retired or (request_id != self._newest and not is_newer(request_id, self._newest))

    def _retire(self, request: _Request) -> None:
        self._retired.append(request.request_id)
        self._assembler.forget([request.request_id])
        if self._current is request:
            self._current = None

    def _switch_to(self, request_id: str, now: float) -> list[Action]:
        """Make ``request_id`` current if it is new and newer. Returns Interrupted for the one it supersedes."""
        actions: list[Action] = []
        if self._current and self._current.request_id == request_id:
            return actions
        if self._current:
            actions.append(Interrupted(self._current.request_id, "superseded"))
            self._retire(self._current)
        self._newest = request_id
        self._current = _Request(request_id, waiting_since=now)
        return actions

    def add(self, message: AudioMessage, now: float) -> list[Action]:
        """A received audio part. May interrupt the current request (a newer one started)."""
        if self._is_stale(message.request_id):
            return []
        actions = self._switch_to(message.request_id, now)
        request = self._current
        assert request is not None
        if message.last:
            request.last_seq = message.seq
        try:
            sentence = self._assembler.add(message)
        except ProtocolError as exc:
            log.warning("player: %s; part dropped", exc)
            return actions
        if sentence is not None and sentence.seq >= request.next_seq and sentence.seq not in request.ready:
            request.ready[sentence.seq] = sentence
        return actions

    def fail(self, request_id: str, seq: int, last: bool | None, now: float) -> list[Action]:
        """The speech side could not synthesize ``seq``: skip it as soon as it is its turn."""
        if self._is_stale(request_id):
            return []
        actions = self._switch_to(request_id, now)
        assert self._current is not None
        self._current.failed.add(seq)
        if last:
            self._current.last_seq = seq
        return actions

    def cancel(self, request_id: str | None, now: float) -> list[Action]:
        """Stop the current request (the stop word or a console command). A named future request is refused too."""
        current = self._current
        if current and (request_id is None or request_id == current.request_id):
            self._retire(current)
            return [Interrupted(current.request_id, "cancelled")]
        if request_id and not self._is_stale(request_id):
            self._newest = request_id
            self._retired.append(request_id)
        return []

    def playback_done(self, now: float) -> None:
        if self._current:
            self._current.playing = False
            self._current.waiting_since = now

    def next(self, now: float) -> list[Action]:
        """Everything that can happen now, ending with at most one Play (the loop plays it, then calls playback_done)."""
        actions: list[Action] = []
        request = self._current
        while request is not None and not request.playing:
            seq = request.next_seq
            if seq in request.ready:
                request.playing = True
                request.next_seq += 1
                actions.append(Play(request.ready.pop(seq)))
                break
            if seq in request.failed:
                actions.append(Skip(request.request_id, seq, "synthesis failed"))
                request.next_seq += 1
                continue
            if request.last_seq is not None and seq > request.last_seq:
                actions.append(Finished(request.request_id))
                self._retire(request)
                break
            if now < request.waiting_since + self.gap_timeout_s:  # same sum as wake_at(), so no float drift
                break  # wait for the missing seq
            # Gap timeout: skip every missing seq up to the next one we have (or the end).
            upto = min(request.ready) if request.ready else request.last_seq
            if upto is None:
                actions.append(Skip(request.request_id, seq, "no more audio arrived"))
                actions.append(Finished(request.request_id, "gave up waiting"))
                self._retire(request)
                break
            for missing in range(seq, upto if request.ready else upto + 1):
                actions.append(Skip(request.request_id, missing, "gap timeout"))
            request.next_seq = upto if request.ready else upto + 1
        return actions

    def wake_at(self) -> float | None:
        """When the loop must call ``next`` again even if nothing arrives (a gap timeout expires)."""
        request = self._current
        if request is None or request.playing or request.next_seq in request.ready:
            return None
        return request.waiting_since + self.gap_timeout_s


# --------------------------------------------------------------------------------------------------------------------
# The player loop
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlayerSettings:
    gap_timeout_s: float = 3.0
    """How long to wait for a missing sentence before skipping it."""
    volume: float = 1.0
    """0.0 to 1.0, applied to every sample."""


class Player:
    """One asyncio loop: messages in (handed off from transport threads), sink out, events and local state out."""

    def __init__(self, transport: Transport, topics: Topics, sink: AudioSink, settings: PlayerSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[EventMessage], None] | None = None) -> None:
        self.transport = transport
        self.topics = topics
        self.sink = sink
        self.settings = settings or PlayerSettings()
        self.volume = self.settings.volume
        self.queue = PlaybackQueue(gap_timeout_s=self.settings.gap_timeout_s)
        self.clock = clock
        self.on_event = on_event
        self.state = ""  # unknown until the first state is published
        self.ready = asyncio.Event()
        self.events: list[EventMessage] = []
        self.timeline: list[tuple[float, EventMessage]] = []  # (clock, event): what the benchmark measures
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.outbox = Outbox(transport, "player")
        self._playing: asyncio.Task[None] | None = None
        self._playing_sentence: SentenceAudio | None = None
        self._cancelled: set[asyncio.Task[None]] = set()  # interrupted playbacks, kept until they have wound down

    def apply_config(self, config: Mapping[str, Any]) -> None:
        """Live settings from the component configuration (Greengrass stores numbers as strings)."""
        from voicebot.edge.greengrass import number

        self.volume = min(1.0, max(0.0, number(config, "Volume", self.volume)))
        self.queue.gap_timeout_s = max(0.1, number(config, "GapTimeoutS", self.queue.gap_timeout_s))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        handler = handoff_to_loop(loop, self._inbox)
        for topic in (self.topics.audio, self.topics.event, self.topics.command):
            self.transport.subscribe(topic, QOS_AT_LEAST_ONCE, handler)
        self.transport.subscribe(self.topics.control, QOS_AT_MOST_ONCE, handler)
        self._set_state("idle", None)
        self.ready.set()
        log.info("player ready on %s", self.topics.audio)
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._step()
                wake = self.queue.wake_at()
                timeout = None if wake is None else max(0.0, wake - self.clock())
                getter = asyncio.create_task(self._inbox.get())
                waiters: set[asyncio.Future] = {getter, stopper}
                if self._playing:
                    waiters.add(self._playing)
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    self._on_message(*getter.result())
                else:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                if self._playing and self._playing.done():
                    self._finish_playing()
        finally:
            stopper.cancel()
            await self._stop_playing()
            self._set_state("idle", None)
            await self.outbox.drain(5.0)

    # -- inputs ------------------------------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = self.clock()
        try:
            if topic == self.topics.audio:
                self._apply(self.queue.add(decode(AudioMessage, payload), now))
            elif topic == self.topics.event:
                event = decode(EventMessage, payload)
                if event.type == "error" and event.source == "speech" and event.request_id and event.seq is not None:
                    self._apply(self.queue.fail(event.request_id, event.seq, event.last, now))
            elif topic == self.topics.control:
                self._apply(self.queue.cancel(decode(ControlMessage, payload).request_id, now))
            elif topic == self.topics.command:
                self._on_command(decode(CommandMessage, payload), now)
        except ProtocolError as exc:
            log.warning("player: bad message on %s: %s", topic, exc)
            if topic != self.topics.event:  # never answer a bad event with an event (no loops)
                self._emit("error", detail=f"bad message on {topic.rsplit('/', 1)[-1]}: {exc}")

    def _on_command(self, command: CommandMessage, now: float) -> None:
        if command.action == "cancel":
            self._apply(self.queue.cancel(command.request_id, now))
        elif command.action == "volume" and command.value is not None:
            self.volume = command.value
            self._emit("volume", detail=f"{command.value:.2f}")

    # -- queue actions -----------------------------------------------------------------------------------------------

    def _step(self) -> None:
        if self._playing is None:
            self._apply(self.queue.next(self.clock()))

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
        self._set_state("speaking" if self.queue.active_request else "idle", self.queue.active_request)

    def _start_playing(self, sentence: SentenceAudio) -> None:
        try:
            samples, rate = decode_sentence(sentence)
        except AudioError as exc:
            log.error("player: %s", exc)
            self._emit("skipped", sentence.request_id, sentence.seq, detail=str(exc))
            self.queue.playback_done(self.clock())
            return
        samples = apply_volume(to_rate(samples, rate, self.sink.sample_rate), self.volume)
        self._playing_sentence = sentence
        if samples.size:
            self._emit("playing", sentence.request_id, sentence.seq, last=sentence.last)
        self._playing = asyncio.create_task(self.sink.play(samples))

    def _finish_playing(self) -> None:
        task, sentence = self._playing, self._playing_sentence
        self._playing, self._playing_sentence = None, None
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("player: sink failed: %s", task.exception())
            self._emit("error", detail=f"audio output failed: {task.exception()}")
        elif sentence is not None and sentence.data:
            self._emit("played", sentence.request_id, sentence.seq, last=sentence.last)
        self.queue.playback_done(self.clock())

    def _interrupt(self) -> None:
        task = self._playing
        if task is not None:
            task.cancel()  # sinks stop within one 20 ms block
            self._cancelled.add(task)
            task.add_done_callback(self._cancelled.discard)
            self._playing, self._playing_sentence = None, None

    async def _stop_playing(self) -> None:
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
            self._send(self.topics.player_state, PlayerStateMessage(state=state, request_id=request_id), QOS_AT_MOST_ONCE)

    def _send(self, topic: str, message: Message, qos: int) -> None:
        self.outbox.send(topic, encode(message), qos)
