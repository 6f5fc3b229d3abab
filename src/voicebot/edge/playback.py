"""The player's decisions, without I/O: which sentence plays next, what is skipped, when a request is over.

``PlaybackQueue`` is pure (time is passed in, actions come out), so every rule is tested without a clock or a sink:
strict ``seq`` order per request; duplicates ignored; parts reassembled; a newer ``requestId`` stops the current
request and drops the rest of it; a missing ``seq`` is skipped after the gap timeout (or at once when the speech side
reports it failed); ``last`` ends the request.

A request can be *held* (the interpreter sent its transcript before the end of the turn was confirmed): its
sentences are kept but nothing of it plays, and the device does not count as speaking (it keeps listening), until it
is released, or cancelled because the person went on. A hold the interpreter never settles lapses after
``hold_limit_s`` (the answer plays rather than nothing).

A sentence that is late past the gap timeout is skipped, but its request stays open for what still comes (a late
sentence must not end the whole answer); the request only *stalls*: the device counts as not speaking (so it
listens) and gives the request up after ``stall_limit_s`` with nothing new.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from voicebot.protocol import AudioAssembler, AudioMessage, ProtocolError, SentenceAudio, is_newer, request_id_time

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
    stalled_since: float | None = None
    """Set when a gap timeout passed with nothing to play: the request waits, quietly, for late sentences."""
    joined_late: bool = False
    """The answer began before this player started (a restart mid-answer): the sentences before the first one it
    received went out while it was not listening and never come, so it starts with what it has."""


class PlaybackQueue:
    """Decides what to play next. Pure: every method takes the current time and returns actions."""

    def __init__(self, *, gap_timeout_s: float = 3.0, stall_limit_s: float = 30.0, remember: int = 256,
                 joined_at: int | None = None, hold_limit_s: float = 5.0) -> None:
        """``joined_at``: when the player started listening (epoch ms, the device's clock, the one its request ids
        are made with): the first request it sees, if made more than a gap timeout before then, is an answer it
        joined in the middle of."""
        self.gap_timeout_s = gap_timeout_s
        self.joined_at = joined_at
        self.hold_limit_s = hold_limit_s
        self._held: dict[str, float] = {}  # request id -> when it was held (a few at most: bounded below)
        self.stall_limit_s = stall_limit_s
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

    @property
    def speaking(self) -> bool:
        """A request is playing or about to (not stalled waiting for late sentences, not held): the microphone stays
        muted."""
        current = self._current
        return bool(current and current.stalled_since is None and current.request_id not in self._held)

    def hold(self, request_id: str, now: float) -> None:
        """Keep ``request_id`` from playing until ``release`` (the end of the person's turn is not confirmed yet)."""
        if self._is_stale(request_id):
            return
        self._held[request_id] = now
        while len(self._held) > 8:
            self._held.pop(next(iter(self._held)))

    def release(self, request_id: str, now: float) -> None:
        """The turn is over: the held request may play (its gap timeouts count from now)."""
        if self._held.pop(request_id, None) is not None and self._current and self._current.request_id == request_id:
            self._current.waiting_since = now

    def held(self, request_id: str | None) -> bool:
        return request_id in self._held

    def _is_stale(self, request_id: str) -> bool:
        return request_id in self._retired or (request_id != self._newest and not is_newer(request_id, self._newest))

    def _retire(self, request: _Request) -> None:
        self._retired.append(request.request_id)
        self._held.pop(request.request_id, None)
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
        made = request_id_time(request_id)
        # Made longer ago than a gap timeout before the player started: its first sentences went out (an answer's
        # first audio follows its question within a second or two) while nobody listened. A request made just
        # before the start (the demo starts its player after asking) is not: its seq 0 may still be on its way.
        joined_late = (self._newest is None and self.joined_at is not None and made is not None
                       and made < self.joined_at - self.gap_timeout_s * 1000)
        self._newest = request_id
        self._current = _Request(request_id, waiting_since=now, joined_late=joined_late)
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
        if request is not None and request.request_id in self._held:
            if now < self._held[request.request_id] + self.hold_limit_s:
                return actions  # not a word of it until the turn is over
            log.warning("player: %s was held for %.0f s and never released; playing it", request.request_id[-8:],
                        self.hold_limit_s)
            self.release(request.request_id, now)
        while request is not None and not request.playing:
            seq = request.next_seq
            if seq in request.ready:
                request.playing, request.stalled_since, request.joined_late = True, None, False
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
            if request.joined_late and request.ready and seq < min(request.ready):  # (only before the first Play)
                request.next_seq = min(request.ready)
                continue
            if request.stalled_since is None and now < request.waiting_since + self.gap_timeout_s:
                break  # wait for the missing seq (same sum as wake_at(), so no float drift)
            if request.ready:  # gap timeout (or stalled): skip every missing seq up to the next one we have
                upto = min(request.ready)
                for missing in range(seq, upto):
                    actions.append(Skip(request.request_id, missing, "gap timeout"))
                request.next_seq, request.stalled_since = upto, None
                continue
            if request.last_seq is not None:  # the rest never came: skip to the end
                for missing in range(seq, request.last_seq + 1):
                    actions.append(Skip(request.request_id, missing, "gap timeout"))
                request.next_seq = request.last_seq + 1
                continue
            if request.stalled_since is None:  # skip this one and keep the request open for what still comes
                actions.append(Skip(request.request_id, seq, "gap timeout"))
                request.next_seq += 1
                request.stalled_since = now
                break
            if now >= request.stalled_since + self.stall_limit_s:
                actions.append(Finished(request.request_id, "gave up waiting"))
                self._retire(request)
            break
        return actions

    def wake_at(self) -> float | None:
        """When the loop must call ``next`` again even if nothing arrives (a gap timeout expires)."""
        request = self._current
        if request is not None and request.request_id in self._held:
            return self._held[request.request_id] + self.hold_limit_s
        if request is None or request.playing or request.next_seq in request.ready:
            return None
        if request.joined_late and request.ready:
            return request.waiting_since
        if request.stalled_since is not None:
            return request.stalled_since + self.stall_limit_s
        return request.waiting_since + self.gap_timeout_s
