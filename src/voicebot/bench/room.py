"""A room you can measure in: the microphone hears the speaker's real output through a simulated room, plus a person.

The speaker's output reaches the microphone after ``delay_s`` (10-150 ms: distance and the sound card's buffers),
``attenuation_db`` quieter, smeared by a synthetic impulse response (exponentially decaying noise with reverberation
time ``rt60_s``, after a direct path), with the room's noise on top (never digital silence). A person's speech
(espeak-ng Korean) is added at chosen moments. Used two ways: offline, as fast as numpy goes (echo return loss
enhancement, false barge-ins over many minutes, transcripts), and in real time, as the microphone and speaker of a
real interpreter and player (barge-in latency).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

RATE = 16_000
FRAME_MS = 30
FRAME = RATE * FRAME_MS // 1000


@dataclass(frozen=True)
class RoomSettings:
    delay_s: float = 0.06
    attenuation_db: float = 6.0
    """How much quieter the echo is than what the speaker plays (a speaker next to the microphone: a few dB)."""
    rt60_s: float = 0.3
    noise_dbfs: float = -60.0
    seed: int = 0

    def impulse_response(self) -> np.ndarray:
        """A direct path, then diffuse reverberation decaying by 60 dB over ``rt60_s`` (starting 5 ms later)."""
        rng = np.random.default_rng(self.seed)
        n = int(RATE * self.rt60_s)
        t = np.arange(n) / RATE
        tail = rng.normal(0, 1, n) * 10 ** (-3 * t / self.rt60_s) * 0.25
        tail[: int(0.005 * RATE)] = 0.0
        ir = np.concatenate([[1.0], tail])
        return ir / np.sqrt(np.sum(ir ** 2)) * 10 ** (-self.attenuation_db / 20)


def echo_of(played: np.ndarray, room: RoomSettings) -> np.ndarray:
    """What the microphone hears of ``played`` (float samples), same length (offline)."""
    delay = int(room.delay_s * RATE)
    wet = np.convolve(played.astype(np.float64), room.impulse_response())[: len(played)]
    return np.concatenate([np.zeros(delay), wet])[: len(played)]


def noise(n: int, room: RoomSettings, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, 32768 * 10 ** (room.noise_dbfs / 20), n)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


class LiveRoom:
    """The same room in real time, for a real player and interpreter in one process: ``sink`` is the player's
    speaker (paced in real time; what it plays lands in the room), ``microphone`` the interpreter's source (each 30 ms
    frame: the echo of what the speaker played, the person if someone speaks, the room's noise). One clock:
    ``time.monotonic``, which is also the asyncio loop's."""

    def __init__(self, room: RoomSettings | None = None) -> None:
        self.room = room or RoomSettings()
        self.ir = self.room.impulse_response()
        self.t0 = time.monotonic()
        self._speaker = np.zeros(RATE * 4, dtype=np.float64)  # what played, on the room's timeline (a ring, 4 s)
        self._person: list[tuple[int, np.ndarray]] = []  # (start sample, samples) scheduled
        self.rng = np.random.default_rng(self.room.seed + 1)
        self.sink = RoomSink(self)
        self.microphone = RoomMicrophone(self)
        self.written_until = 0  # the speaker's samples are in the room up to here
        self.early_frames = 0
        """Microphone frames built before the speaker had written what they hear (the rig's own check: 0)."""

    def sample_at(self, t: float) -> int:
        return int(round((t - self.t0) * RATE))

    def speaker_wrote(self, start: int, samples: np.ndarray) -> None:
        self._speaker[np.arange(start, start + len(samples)) % len(self._speaker)] = samples.astype(np.float64)
        self.written_until = max(self.written_until, start + len(samples))

    def say(self, samples: np.ndarray, at: float) -> None:
        """The person speaks ``samples`` from monotonic time ``at`` on."""
        self._person.append((self.sample_at(at), samples.astype(np.float64)))
        self._person = self._person[-16:]

    def _played(self, start: int, n: int) -> np.ndarray:
        idx = np.arange(start, start + n) % len(self._speaker)
        out = self._speaker[idx].copy()
        return out

    def frame(self, start: int) -> bytes:
        """The microphone's frame from sample ``start``: the echo, the person, the noise."""
        delay = int(self.room.delay_s * RATE)
        span = len(self.ir) - 1
        if 0 < self.written_until < start + FRAME - delay and self.sink.playing:
            self.early_frames += 1
        played = self._played(start - delay - span, FRAME + span)
        echo = np.convolve(played, self.ir, mode="valid")[:FRAME]
        out = echo + noise(FRAME, self.room, self.rng)
        for begin, samples in self._person:
            a, b = max(start, begin), min(start + FRAME, begin + len(samples))
            if a < b:
                out[a - start: b - start] += samples[a - begin: b - begin]
        # what played long ago is gone from the room: clear the ring behind us
        old = np.arange(start - delay - span - RATE, start - delay - span) % len(self._speaker)
        self._speaker[old] = 0.0
        return to_int16(out).tobytes()


class RoomSink:
    """The player's speaker in the room: 20 ms blocks written ``latency_s`` ahead of the moment they play, as into a
    sound card's buffer (the player stamps its far end with that latency); what is written plays, even if the player
    stops meanwhile. Written ahead, a block is in the room before any microphone frame can hear it, however busy the
    process (written just in time, a late block left holes in the echo that no real speaker makes)."""

    latency_s = 0.03
    #: Each sentence starts up to this much off the moment the player stamps (a sound card's buffer position is
    #: known to about a millisecond or two, not to the sample), drawn anew per sentence.
    jitter_s = 0.002  # (bench/bargein.py's STAMP_JITTER_S offline)

    def __init__(self, live: LiveRoom) -> None:
        self.live = live
        self._rng = np.random.default_rng(live.room.seed + 11)
        self.sample_rate = RATE
        self.seconds_played = 0.0
        self.playing = False

    async def play(self, samples: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + self.latency_s + self._rng.uniform(-self.jitter_s, self.jitter_s)  # first sample heard
        step = RATE // 50
        self.playing = True
        try:
            for i in range(0, len(samples), step):
                block = samples[i:i + step]
                at = start + i / RATE
                await asyncio.sleep(max(0.0, at - self.latency_s - loop.time()))
                self.live.speaker_wrote(self.live.sample_at(at), block)
                self.seconds_played += len(block) / RATE
            await asyncio.sleep(max(0.0, start + len(samples) / RATE - loop.time()))
        finally:
            self.playing = False

    def close(self) -> None:
        pass


class RoomMicrophone:
    """The interpreter's microphone in the room: a frame every 30 ms, in real time; ``last_captured_at`` is when the
    latest frame's first sample was captured (the echo canceller lines the far end up with it)."""

    description = "room microphone"

    def __init__(self, live: LiveRoom) -> None:
        self.live = live
        self.last_captured_at = 0.0
        self.running = True

    async def frames(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        start = self.live.sample_at(loop.time())
        n = 0
        while self.running:
            first = start + n * FRAME
            ready = self.live.t0 + (first + FRAME) / RATE  # a frame is delivered once it is whole
            await asyncio.sleep(max(0.0, ready - loop.time()))
            self.last_captured_at = self.live.t0 + first / RATE
            yield self.live.frame(first)
            n += 1
