"""Barge-in: is someone talking over the device, or is it the device's own voice coming back?

Pure, fed once per 30 ms frame while the device speaks, after echo cancellation: the VAD's verdict on the cancelled
signal and the frame's level before and after cancellation. A frame is the person's when the VAD calls the cancelled
signal speech and cancellation left most of the frame (within ``echo_margin_db`` of what the microphone heard): AEC3
takes 20-40 dB off the device's own voice, but nothing off a person's. ``min_speech_ms`` of such frames within twice
that time is a barge-in; twice as many while the canceller is still learning the room (its first seconds of the
device's speech after it starts), when it lets bursts of the device's own voice through (3 % of first answers
in the bench's rooms were cut by themselves without this; none with it), and three times as many in the first second
of each sentence (the player's stamps are a little off, differently for each sentence, and AEC3 lets bursts through
while it finds the echo again).

Where the echo at the microphone is as loud as the person, AEC3 takes the person down with it; there a frame is also
the person's when the linear filter's output (edge/speex.py, once the canceller trusts it) is speech, loud, most of
the frame (within ``linear_margin_db``) and unlike the echo the filter took off (|correlation| under
``linear_max_corr``: a filter put off by a changed room leaves echo that looks like its estimate; a person does not).
Frame by frame that look is noisy while the filter re-learns, so the linear filter's verdicts count only once AEC3
has let something of them through (a frame ``linear_aec3_over_floor_db`` above the level it takes the device's echo
down to): AEC3 re-learns a changed room within a few frames and takes all of the device's voice off, while of a
person talking over the device it lets some frames through (in the bench's loudest room, half of them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

#: While the echo canceller learns the room, this many times the person's frames make a barge-in (AEC3's verdicts).
LEARNING_FACTOR = 2
#: ... and this many in the first second of each sentence (heard a little off its stamp, its echo found again).
SETTLING_FACTOR = 3


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
    linear_margin_db: float = 6.0
    """After the linear filter, a frame is the person's if it took off less than this (it takes 20-30 dB off the
    device's echo once it trusts itself)."""
    linear_max_corr: float = 0.15
    """... and what it left is this little like its own echo estimate ..."""
    linear_aec3_over_floor_db: float = 6.0
    """... and AEC3 has not taken the frame down to where it takes the device's echo (this much above that): after
    the room changes under the linear filter, what it leaves of the device's voice looks like a person for a second,
    while AEC3, which re-learns fast, takes it all off."""
    frame_ms: int = 30

    @property
    def frames(self) -> int:
        return max(1, round(self.min_speech_ms / self.frame_ms))


class LinearView(NamedTuple):
    """The frame after the linear echo filter (given only while the canceller trusts the filter)."""

    voiced: bool
    level_db: float
    corr: float
    aec3_db: float
    """What AEC3 left of the same frame ..."""
    aec3_floor_db: float
    """... and the level it takes the device's echo down to here."""


class BargeInDetector:
    def __init__(self, settings: BargeInSettings | None = None) -> None:
        self.settings = settings or BargeInSettings()
        # (each frame: the linear filter's vote, AEC3's vote, whether AEC3 let through something of its person)
        self._recent: deque[tuple[int, int, bool]] = deque(maxlen=2 * SETTLING_FACTOR * self.settings.frames)

    def reset(self) -> None:
        self._recent.clear()

    def person(self, voiced: bool, mic_db: float, out_db: float, linear: LinearView | None = None) -> bool:
        """One frame's verdict, AEC3's or the linear filter's; ``frame`` adds how many are needed and, for the linear
        filter's, that AEC3 let something of them through."""
        return self._aec3_person(voiced, mic_db, out_db) or self._linear_person(mic_db, linear)

    def _aec3_person(self, voiced: bool, mic_db: float, out_db: float) -> bool:
        s = self.settings
        return voiced and out_db >= mic_db - s.echo_margin_db and out_db >= s.min_level_dbfs

    def _linear_person(self, mic_db: float, linear: LinearView | None) -> bool:
        s = self.settings
        return linear is not None and linear.voiced and linear.level_db >= s.min_level_dbfs \
            and linear.level_db >= mic_db - s.linear_margin_db and abs(linear.corr) < s.linear_max_corr

    def frame(self, voiced: bool, mic_db: float, out_db: float, *, strictness: int = 1,
              linear: LinearView | None = None) -> bool:
        """One frame while the device speaks; True once the person has spoken long enough over it. ``strictness``:
        how many times the frames AEC3's verdicts need now (the canceller's ``strictness``: learning the room, a
        sentence's echo being found again); the linear filter's verdicts (``linear``: its view, when trusted),
        realigned and judged, count as much as ever, once AEC3 too has let something of them through."""
        s = self.settings
        by_linear = self._linear_person(mic_db, linear)
        heard = linear is not None and by_linear and linear.aec3_db >= linear.aec3_floor_db + s.linear_aec3_over_floor_db
        self._recent.append((strictness if by_linear else 0, int(self._aec3_person(voiced, mic_db, out_db)), heard))
        needed = s.frames * strictness
        window = list(self._recent)[-2 * needed:]
        linear_counts = any(h for _, _, h in window)
        return sum(max(lin if linear_counts else 0, aec3) for lin, aec3, _ in window) >= needed
