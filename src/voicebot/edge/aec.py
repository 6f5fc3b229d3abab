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
device's echo down well here (``linear_trusted``: 80 % of its latest 100 loud echo frames (3 s) taken down by at
least ``LINEAR_TRUST_DB``). Until then (its first 5-10 s of the device's speech in a room), and whenever the room
changes under it, only AEC3's output counts.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import numpy as np

from voicebot.edge.bargein import LEARNING_FACTOR, SETTLING_FACTOR, LinearView
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
#: ... and trusted once ``LINEAR_TRUST_SHARE`` of them lose ``LINEAR_TRUST_DB``: then the person's words, which it
#: cannot take off, stand out (at 90 %, a few badly cancelled frames took the trust away for seconds at a time, and
#: with it a person's first words; a room that changes under the filter is caught by the detector, edge/bargein.py).
LINEAR_TRUST_SHARE, LINEAR_TRUST_DB = 0.8, 12.0
#: The judgement is over this many such frames (3 s), leaving out the latest few (a person's onset is no echo).
LINEAR_JUDGE_FRAMES, LINEAR_RECENT_FRAMES = 100, 10
#: Each sentence's far end is realigned for the linear filter over its first frames of sound (240 ms), searching
#: this far either way (6 ms), once the filter has adapted on ``REALIGN_AFTER`` loud echo frames (even roughly: with
#: each sentence heard a little off its stamp, it learns the room only if it is realigned from the start) and where
#: the path it has learnt explains the held microphone frames (all but ``REALIGN_FIT_DB`` of them, at the shift found).
REALIGN_FRAMES, REALIGN_SEARCH, REALIGN_AFTER, REALIGN_FIT_DB = 8, 96, 30, 6.0
#: ... and a sentence with no sound in its first ``REALIGN_MAX_FRAMES`` frames keeps the previous alignment.
REALIGN_MAX_FRAMES = 30
#: Half the length of the fractional-delay filter the linear filter's far end goes through.
FRACTION_TAPS = 16
#: The start of each sentence during which a barge-in on AEC3's output needs the most of the person.
SETTLE_S = 1.0
#: Microphone frames are laid out back to back (their stamps jitter with the event loop) unless a stamp is this far
#: off (frames were skipped or dropped).
MIC_JITTER_S = 0.004


class EchoCancellerUnavailable(RuntimeError):
    """livekit (WebRTC audio processing) is not installed: no echo cancellation, the half-duplex guard stays."""


def _fractional_delay(fraction: float) -> np.ndarray:
    """A windowed-sinc filter that delays by ``fraction`` of a sample (|fraction| <= 0.5) besides its own
    ``FRACTION_TAPS``."""
    k = np.arange(2 * FRACTION_TAPS + 1) - FRACTION_TAPS
    return np.sinc(k - fraction) * np.hanning(2 * FRACTION_TAPS + 3)[1:-1]


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
        self.aec3_db = -120.0
        """... and what AEC3 itself left of it (``out_db`` is the microphone's level where the frame passes as heard)."""
        self.far_db = -120.0
        """The loudest 10 ms of the far end whose echo can be in the latest frame."""
        self._echo_gain: deque[float] = deque(maxlen=ECHO_GAIN_KEEP)  # microphone minus far end, device speaking
        self._out_levels: deque[float] = deque(maxlen=ECHO_GAIN_KEEP)  # AEC3's output level, device speaking
        self.far_frames = 0
        """Frames processed while the device spoke (bounded at ``LEARNING_FRAMES``)."""
        self.passed = 0
        """Frames passed as the microphone heard them (louder than any echo: the person's)."""
        speex = _linear() if linear else None
        self.linear = LinearEchoFilter(speex, self._far) if speex is not None else None
        """Speex's linear filter beside AEC3, for the barge-in detector (None without libspeexdsp)."""
        self._chunk_end = float("-inf")
        self._next_mic_at: float | None = None
        self._sentence_started = float("-inf")  # (stamp of the latest sentence's first sample)
        self._last_at = float("-inf")  # (the latest microphone frame's time)

    def reference(self, start: float, samples: np.ndarray, now: float) -> None:
        """The player plays ``samples`` from ``start`` on; no samples: nothing more plays from ``start`` on."""
        if not len(samples):
            self._cut(start)
            return
        if abs(start - self._chunk_end) > 0.5 / RATE:  # not the continuation of what played: a new sentence
            self._sentence_started = start
            if self.linear is not None:
                self.linear.sentence_starts(start)
        self._chunk_end = start + len(samples) / RATE
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
        captured_at = self._last_at = self._back_to_back(captured_at, len(mic))
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
        self.out_db = self.aec3_db = level_db(np.frombuffer(cleaned, dtype="<i2"))
        self.far_db = self._loudest_far(captured_at, len(mic))
        if self.linear is not None:
            self.linear.frame(mic, captured_at, self.far_db, self.mic_db)
        if self.far_db <= FAR_ACTIVE_DB:
            return cleaned
        self.far_frames = min(LEARNING_FRAMES, self.far_frames + 1)
        self._out_levels.append(self.out_db)
        gain = self.echo_gain_db
        if gain is not None and self.mic_db >= self.far_db + gain + PERSON_MARGIN_DB:
            self.passed += 1  # AEC3 would have taken the person down with an echo that cannot be this loud
            self.out_db = self.mic_db
            return pcm
        self._echo_gain.append(self.mic_db - self.far_db)  # (not the person's frames: they are no echo)
        return cleaned

    def _back_to_back(self, captured_at: float, n: int) -> float:
        """The frame's time on a sample-exact timeline: right after the previous frame, unless its stamp says a
        gap (a far end laid out by jittery stamps would jump back and forth under the echo filters)."""
        expected, self._next_mic_at = self._next_mic_at, None
        if expected is not None and abs(captured_at - expected) < MIC_JITTER_S:
            captured_at = expected
        self._next_mic_at = captured_at + n / RATE
        return captured_at

    @property
    def linear_trusted(self) -> bool:
        """The linear filter takes the device's echo down well enough here for its output to tell a person."""
        return self.linear is not None and self.linear.trusted

    def linear_view(self, is_speech: Callable[[bytes], bool]) -> LinearView | None:
        """The latest frame after the linear filter, for the barge-in detector; None while the filter is not
        trusted here."""
        f = self.linear
        if f is None or not f.trusted or not f.pcm:  # (no output while a sentence's start is realigned)
            return None
        return LinearView(is_speech(f.pcm), f.level_db, f.corr, self.aec3_db, self.out_floor_db)

    @property
    def learning(self) -> bool:
        """Still learning the room: less than ``LEARNING_FRAMES`` of the device's speech since it started."""
        return self.far_frames < LEARNING_FRAMES

    @property
    def strictness(self) -> int:
        """How many times the person's frames a barge-in on AEC3's output needs now: more while it learns the room,
        most in the first ``SETTLE_S`` of a sentence (heard a little off its stamp: AEC3 lets bursts of the device's
        voice through while it finds the echo again)."""
        if self._last_at - self._sentence_started < SETTLE_S:
            return SETTLING_FACTOR
        return LEARNING_FACTOR if self.learning else 1

    @property
    def echo_gain_db(self) -> float | None:
        """How loud the device's echo gets here, relative to the far end (the 90th percentile of the microphone's
        level over the far end's, while the device speaks); None until it has spoken a little."""
        if len(self._echo_gain) < ECHO_GAIN_MIN:
            return None
        return float(np.percentile(self._echo_gain, 90))

    @property
    def out_floor_db(self) -> float:
        """The level AEC3 takes the device's echo down to here (its output's 10th percentile while the device
        speaks: the room's noise, mostly)."""
        return float(np.percentile(self._out_levels, 10)) if self._out_levels else -120.0

    def _loudest_far(self, captured_at: float, n: int) -> float:
        window = round(ECHO_WINDOW_S * RATE)
        far = self._far(captured_at + n / RATE - ECHO_WINDOW_S, window).astype(np.float64) / 32768.0
        power = np.mean((far[: window // SUB * SUB].reshape(-1, SUB)) ** 2, axis=1)
        return 10 * math.log10(float(power.max()) + 1e-12)


class LinearEchoFilter:
    """Speex's linear filter beside AEC3, for the barge-in detector only: the same far end, realigned at each
    sentence to a fraction of a sample from the echo path it has learnt; how much it takes off the device's echo here
    (``trusted``); and how much of what it leaves looks like its own echo estimate (``corr``). ``far(start, n)``: the
    far end on the microphone's timeline (the canceller's)."""

    def __init__(self, speex: SpeexEchoCanceller, far: Callable[[float, int], np.ndarray]) -> None:
        self._speex = speex
        self._far = far
        self.pcm = b""
        self.level_db = -120.0
        """The latest frame after the filter, and its level."""
        self.corr = 0.0
        """How much of what it left looks like its own echo estimate (normalised correlation, -1..1): near 0 for a
        person's voice, far from 0 when the filter is off (the room changed) and leaves echo."""
        self.loss: deque[float] = deque(maxlen=LINEAR_JUDGE_FRAMES + LINEAR_RECENT_FRAMES)
        """What it took off each of the latest loud frames of the device's echo (dB)."""
        self.shift = 0.0
        """Samples by which its far end is later than its stamps (realigned at each sentence, to a fraction of a
        sample: half a sample off costs 10 dB of its cancellation)."""
        self._fraction = _fractional_delay(0.0)
        self._sentence_at: float | None = None  # a sentence starting here is still to be realigned
        self._held: list[tuple[np.ndarray, float, float, float]] = []  # its first frames: mic, time, far dB, mic dB

    def sentence_starts(self, at: float) -> None:
        """A sentence is heard from ``at`` on: its first frames are held back until its far end is realigned."""
        self._sentence_at = at

    def frame(self, mic: np.ndarray, captured_at: float, far_db: float, mic_db: float) -> None:
        """The frame through the linear filter; a new sentence's first frames are held until its far end is
        realigned (then run through at once)."""
        at = self._sentence_at
        if at is not None and captured_at + len(mic) / RATE > at:
            if not self._has_adapted():
                self._sentence_at = None  # (nothing to align to yet: the filter learns this sentence as it is)
            else:
                self._held.append((mic, captured_at, far_db, mic_db))
                sounding = sum(1 for held in self._held if held[2] > FAR_ACTIVE_DB)
                if sounding < REALIGN_FRAMES and len(self._held) < REALIGN_MAX_FRAMES:
                    self.pcm, self.level_db, self.corr = b"", -120.0, 0.0
                    return
                if sounding >= REALIGN_FRAMES:
                    self._realign()
                held, self._held, self._sentence_at = self._held, [], None
                for args in held:
                    self._run(*args)
                return
        self._run(mic, captured_at, far_db, mic_db)

    def _run(self, mic: np.ndarray, captured_at: float, far_db: float, mic_db: float) -> None:
        whole, k = round(self.shift), FRACTION_TAPS
        far = np.convolve(self._far(captured_at - (whole + k) / RATE, len(mic) + 2 * k), self._fraction, "valid")
        linear = self._speex.process(mic, np.clip(np.round(far), -32768, 32767).astype(np.int16))
        self.pcm = linear.tobytes()
        self.level_db = level_db(linear)
        left = linear.astype(np.float64)
        estimate = mic[: len(linear)].astype(np.float64) - left  # (the echo the filter took off)
        norm = math.sqrt(float(np.dot(left, left)) * float(np.dot(estimate, estimate)))
        self.corr = float(np.dot(left, estimate)) / norm if norm > 0 else 0.0
        if far_db > FAR_ACTIVE_DB and mic_db > LINEAR_LOUD_DBFS:
            self.loss.append(mic_db - self.level_db)

    def _has_adapted(self) -> bool:
        """It has adapted on enough loud echo to have an echo path to realign against (roughly is enough)."""
        return len(self.loss) >= REALIGN_AFTER

    def _realign(self) -> None:
        """Find how much later (or earlier) than its stamp this sentence's echo comes, against the echo path the
        filter has learnt: the shift whose predicted echo best matches the held microphone frames."""
        h = self._speex.impulse_response()
        start = self._held[0][1]
        mic = np.concatenate([m for m, _, _, _ in self._held]).astype(np.float64)
        n, taps, search = len(mic), len(h), REALIGN_SEARCH
        whole = round(self.shift)
        far = self._far(start - (taps + search + whole) / RATE, taps + n + 2 * search)
        size = 1 << (len(far) + taps).bit_length()
        echo = np.fft.irfft(np.fft.rfft(far.astype(np.float64), size) * np.fft.rfft(h, size), size)
        scores = np.zeros(2 * search + 1)
        for j, d in enumerate(range(-search, search + 1)):
            predicted = echo[taps + search - d: taps + search - d + n]
            power = float(np.dot(predicted, predicted))
            scores[j] = float(np.dot(mic, predicted)) ** 2 / power if power > 0 else 0.0  # (mic energy it explains)
        j = int(np.argmax(scores))
        unexplained = max(float(np.dot(mic, mic)) - scores[j], 1e-9)
        # (not at the edge of the search, and a clear fit: else the filter learns the sentence as it comes)
        if 0 < j < 2 * search and 10 * math.log10(float(np.dot(mic, mic)) / unexplained) >= REALIGN_FIT_DB:
            below, at, above = scores[j - 1], scores[j], scores[j + 1]
            curve = below - 2 * at + above
            fraction = float(np.clip(0.5 * (below - above) / curve, -0.5, 0.5)) if curve < 0 else 0.0
            self.shift = whole + (j - search) + fraction  # (the peak between the samples: a parabola)
            self._fraction = _fractional_delay(self.shift - round(self.shift))

    @property
    def trusted(self) -> bool:
        """It takes the device's echo down well enough here for its output to tell a person."""
        judged = list(self.loss)[:-LINEAR_RECENT_FRAMES]
        return len(judged) >= LINEAR_JUDGE_FRAMES \
            and float(np.percentile(judged, 100 * (1 - LINEAR_TRUST_SHARE))) >= LINEAR_TRUST_DB
