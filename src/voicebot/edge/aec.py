"""Echo cancellation: take the device's own voice out of the microphone signal, so a person can talk over it.

WebRTC's audio processing module (AEC3, noise suppression, high-pass filter) through ``livekit``'s
``rtc.AudioProcessingModule`` (prebuilt for aarch64). The far end (what the speaker plays) comes from the player, over
the device-local ``reference`` topic, each chunk stamped with the monotonic time its first sample plays (one clock for
both processes on a Linux device). Here the chunks are laid out on the microphone's own timeline, so AEC3 always gets
a continuous far-end stream (silence where nothing plays) that precedes the echo by the room's delay, which its delay
estimator finds (the path speaker -> air -> microphone, tens to a few hundred ms).

No adaptive filter is written here; this module only aligns the two streams and feeds AEC3 10 ms at a time.

One thing it decides: until AEC3 has learnt the room (the first second or so of the far end, and in double talk),
its suppressor takes the person's voice down with the echo it fears, 30-40 dB, so a person who talks over the first
words of an answer is not heard at all. The canceller also keeps how loud the device's echo can be here (the
microphone's level against the far end's over the last ``ECHO_WINDOW_S``, a high percentile over the latest seconds
of the device's speech); a frame ``PERSON_MARGIN_DB`` louder than any echo the far end can be making is the
person's, and passes as the microphone heard it.

And where the echo is as loud as the person, AEC3's suppressor leaves too little of the person's first words for the
barge-in detector (edge/bargein.py). So the same aligned far end also goes through Speex's linear filter
(edge/speex.py), which suppresses nothing: the detector may look at its output once the filter has shown it takes the
device's echo down well here (``linear_trusted``: 90 % of its latest 100 loud echo frames (3 s) taken down by at
least ``LINEAR_TRUST_DB``). Until then (its first 5-10 s of the device's speech in a room), and whenever the room
changes under it, only AEC3's output counts.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import numpy as np

from voicebot.edge.bargein import LinearView
from voicebot.edge.speex import SpeexEchoCanceller, SpeexUnavailable

log = logging.getLogger(__name__)

RATE = 16_000
SUB = RATE // 100  # AEC3 takes 10 ms frames
#: The far end kept (bounded): chunks older than this, relative to the microphone, are of no use to AEC3.
KEEP_S = 3.0
#: The far end whose echo can be in a microphone frame: the room's delay (up to ~150 ms) and its reverberation.
ECHO_WINDOW_S = 0.4
#: The far end is playing (its loudest 10 ms in the window above this).
FAR_ACTIVE_DB = -50.0
#: A frame this much louder than the loudest echo seen for the far end's level is the person's.
PERSON_MARGIN_DB = 10.0
#: Frames of the device's speech before its echo's loudness is known (and how many are kept: ~9 s).
ECHO_GAIN_MIN, ECHO_GAIN_KEEP = 10, 300
#: The device's speech (frames) AEC3 needs to learn the room after it starts: until then it lets bursts of it through.
LEARNING_FRAMES = 67  # 2 s
#: The linear filter is judged on frames whose echo is this loud (quieter ones are mostly the room's noise).
LINEAR_LOUD_DBFS = -40.0
#: ... and trusted once 90 % of them lose this much: then the person's words, which it cannot take off, stand out.
LINEAR_TRUST_DB = 18.0
#: The judgement is over this many such frames (3 s), leaving out the latest few (a person's onset is no echo).
LINEAR_JUDGE_FRAMES, LINEAR_RECENT_FRAMES = 100, 10


class EchoCancellerUnavailable(RuntimeError):
    """livekit (WebRTC audio processing) is not installed: no echo cancellation, the half-duplex guard stays."""


def _linear() -> SpeexEchoCanceller | None:
    try:
        return SpeexEchoCanceller(RATE)
    except SpeexUnavailable as exc:
        log.warning("echo cancellation: no linear filter for barge-in (%s); AEC3's output alone decides", exc)
        return None


def _apm(noise_suppression: bool) -> object:
    try:
        from livekit import rtc
    except ImportError as exc:
        raise EchoCancellerUnavailable("echo cancellation needs livekit (the device extra)") from exc
    return rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                     high_pass_filter=True, auto_gain_control=False)


def level_db(samples: np.ndarray) -> float:
    x = samples.astype(np.float64) / 32768.0
    return 10 * math.log10(float(np.mean(x * x)) + 1e-12)


class EchoCanceller:
    """Feeds AEC3 the far end that was playing while each microphone frame was captured, and returns the frame
    with the device's own voice taken out. ``frame(pcm, captured_at)``: ``captured_at`` is the monotonic time the
    frame's first sample was captured."""

    def __init__(self, *, noise_suppression: bool = False, linear: bool = True) -> None:
        from livekit import rtc

        self._rtc = rtc
        self._apm = _apm(noise_suppression)
        self._apm.set_stream_delay_ms(0)  # (AEC3 estimates the delay itself; the hint is required with AEC on)
        self._chunks: deque[tuple[float, np.ndarray]] = deque()  # (start time, samples), in time order
        self.far_until = float("-inf")
        """Until when the player said it plays (monotonic): a second after that, nothing is left to cancel."""
        self.mic_db = -120.0
        self.out_db = -120.0
        """The latest frame's level before and after cancellation (how much of it was echo)."""
        self.far_db = -120.0
        """The loudest 10 ms of the far end whose echo can be in the latest frame."""
        self._echo_gain: deque[float] = deque(maxlen=ECHO_GAIN_KEEP)  # microphone minus far end, device speaking
        self.far_frames = 0
        """Frames processed while the device spoke (bounded at ``LEARNING_FRAMES``)."""
        self.passed = 0
        """Frames passed as the microphone heard them (louder than any echo: the person's)."""
        self._linear = _linear() if linear else None
        self.linear_pcm = b""
        self.linear_db = -120.0
        """The latest frame after the linear filter, and its level."""
        self.linear_corr = 0.0
        """How much of what the linear filter left looks like its own echo estimate (normalised correlation, -1..1):
        near 0 for a person's voice, far from 0 when the filter is off (the room changed) and leaves echo."""
        self._linear_loss: deque[float] = deque(maxlen=LINEAR_JUDGE_FRAMES + LINEAR_RECENT_FRAMES)

    def reference(self, start: float, samples: np.ndarray, now: float) -> None:
        """The player plays ``samples`` from ``start`` on; no samples: nothing more plays from ``start`` on."""
        if not len(samples):
            self._cut(start)
            return
        self._chunks.append((start, samples.astype(np.int16, copy=False)))
        self.far_until = max(self.far_until, start + len(samples) / RATE)
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) / RATE < now - KEEP_S:
            self._chunks.popleft()
        while len(self._chunks) > 600:  # (bounded whatever the timestamps say)
            self._chunks.popleft()

    def _cut(self, at: float) -> None:
        kept: deque[tuple[float, np.ndarray]] = deque()
        for start, samples in self._chunks:
            if start < at:
                kept.append((start, samples[: max(0, round((at - start) * RATE))]))
        self._chunks = kept
        self.far_until = min(self.far_until, at)

    def _far(self, start: float, n: int) -> np.ndarray:
        """The far end from ``start`` for ``n`` samples: what played then, zeros where nothing did."""
        out = np.zeros(n, dtype=np.int16)
        end = start + n / RATE
        for chunk_start, samples in self._chunks:
            chunk_end = chunk_start + len(samples) / RATE
            if chunk_end <= start or chunk_start >= end:
                continue
            a = max(0, round((start - chunk_start) * RATE))  # first sample of the chunk we need
            b = min(len(samples), round((end - chunk_start) * RATE))
            at = max(0, round((chunk_start - start) * RATE))  # where it goes in ``out``
            take = samples[a:b][: n - at]
            out[at: at + len(take)] = take
        return out

    def frame(self, pcm: bytes, captured_at: float) -> bytes:
        mic = np.frombuffer(pcm, dtype="<i2")
        far = self._far(captured_at, len(mic))
        out = bytearray()
        for i in range(0, len(mic) - SUB + 1, SUB):
            reverse = self._rtc.AudioFrame(far[i:i + SUB].tobytes(), RATE, 1, SUB)
            self._apm.process_reverse_stream(reverse)
            near = self._rtc.AudioFrame(mic[i:i + SUB].tobytes(), RATE, 1, SUB)
            self._apm.process_stream(near)
            out += bytes(near.data.cast("B"))
        cleaned = bytes(out)
        self.mic_db = level_db(mic)
        self.out_db = level_db(np.frombuffer(cleaned, dtype="<i2"))
        self.far_db = self._loudest_far(captured_at, len(mic))
        if self._linear is not None:
            self._linear_frame(mic, far)
        if self.far_db <= FAR_ACTIVE_DB:
            return cleaned
        self.far_frames = min(LEARNING_FRAMES, self.far_frames + 1)
        gain = self.echo_gain_db
        if gain is not None and self.mic_db >= self.far_db + gain + PERSON_MARGIN_DB:
            self.passed += 1  # AEC3 would have taken the person down with an echo that cannot be this loud
            self.out_db = self.mic_db
            return pcm
        self._echo_gain.append(self.mic_db - self.far_db)  # (not the person's frames: they are no echo)
        return cleaned

    def _linear_frame(self, mic: np.ndarray, far: np.ndarray) -> None:
        assert self._linear is not None
        linear = self._linear.process(mic, far)
        self.linear_pcm = linear.tobytes()
        self.linear_db = level_db(linear)
        left = linear.astype(np.float64)
        estimate = mic[: len(linear)].astype(np.float64) - left  # (the echo the filter took off)
        norm = math.sqrt(float(np.dot(left, left)) * float(np.dot(estimate, estimate)))
        self.linear_corr = float(np.dot(left, estimate)) / norm if norm > 0 else 0.0
        if self.far_db > FAR_ACTIVE_DB and self.mic_db > LINEAR_LOUD_DBFS:
            self._linear_loss.append(self.mic_db - self.linear_db)

    @property
    def linear_trusted(self) -> bool:
        """The linear filter takes the device's echo down well enough here for its output to tell a person."""
        judged = list(self._linear_loss)[:-LINEAR_RECENT_FRAMES]
        return len(judged) >= LINEAR_JUDGE_FRAMES and float(np.percentile(judged, 10)) >= LINEAR_TRUST_DB

    def linear_view(self, is_speech: Callable[[bytes], bool]) -> LinearView | None:
        """The latest frame after the linear filter, for the barge-in detector; None while the filter is not
        trusted here."""
        if not self.linear_trusted:
            return None
        return LinearView(is_speech(self.linear_pcm), self.linear_db, self.linear_corr)

    @property
    def learning(self) -> bool:
        """Still learning the room: less than ``LEARNING_FRAMES`` of the device's speech since it started."""
        return self.far_frames < LEARNING_FRAMES

    @property
    def echo_gain_db(self) -> float | None:
        """How loud the device's echo gets here, relative to the far end (the 90th percentile of the microphone's
        level over the far end's, while the device speaks); None until it has spoken a little."""
        if len(self._echo_gain) < ECHO_GAIN_MIN:
            return None
        return float(np.percentile(self._echo_gain, 90))

    def _loudest_far(self, captured_at: float, n: int) -> float:
        window = round(ECHO_WINDOW_S * RATE)
        far = self._far(captured_at + n / RATE - ECHO_WINDOW_S, window).astype(np.float64) / 32768.0
        power = np.mean((far[: window // SUB * SUB].reshape(-1, SUB)) ** 2, axis=1)
        return 10 * math.log10(float(power.max()) + 1e-12)
