"""Barge-in: is someone talking over the device, or is it the device's own voice coming back?

Pure, fed once per 30 ms frame while the device speaks, after echo cancellation: the VAD's verdict on the cancelled
signal and the frame's level before and after cancellation. A frame is the person's when the VAD calls the cancelled
signal speech and cancellation left most of the frame (within ``echo_margin_db`` of what the microphone heard): AEC3
takes 20-40 dB off the device's own voice, but nothing off a person's. ``min_speech_ms`` of such frames within twice
that time is a barge-in; twice as many while the canceller is still learning the room (its first seconds of the
device's speech after it starts), when it lets bursts of the device's own voice through (3 % of first answers
in the bench's rooms were cut by themselves without this; none with it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: While the echo canceller learns the room, this many times the person's frames make a barge-in.
LEARNING_FACTOR = 2


@dataclass(frozen=True)
class BargeInSettings:
    enabled: bool = True
    min_speech_ms: int = 150
    """The person's voice needed before the answer stops (short sounds, a cough, a clatter do not stop it)."""
    echo_margin_db: float = 12.0
    """A frame is the person's if cancellation took off less than this: the device's own voice loses far more."""
    min_level_dbfs: float = -40.0
    """And it is at least this loud after cancellation: the room's reverberation of the device's own words, which
    AEC3 takes least off, stays below it; a person speaking to the device is well above it."""
    frame_ms: int = 30

    @property
    def frames(self) -> int:
        return max(1, round(self.min_speech_ms / self.frame_ms))


class BargeInDetector:
    def __init__(self, settings: BargeInSettings | None = None) -> None:
        self.settings = settings or BargeInSettings()
        self._recent: deque[bool] = deque(maxlen=2 * LEARNING_FACTOR * self.settings.frames)

    def reset(self) -> None:
        self._recent.clear()

    def person(self, voiced: bool, mic_db: float, out_db: float) -> bool:
        s = self.settings
        return voiced and out_db >= mic_db - s.echo_margin_db and out_db >= s.min_level_dbfs

    def frame(self, voiced: bool, mic_db: float, out_db: float, *, learning: bool = False) -> bool:
        """One frame while the device speaks; True once the person has spoken long enough over it (``learning``:
        the echo canceller is still learning the room)."""
        self._recent.append(self.person(voiced, mic_db, out_db))
        needed = self.settings.frames * (LEARNING_FACTOR if learning else 1)
        return sum(list(self._recent)[-2 * needed:]) >= needed
