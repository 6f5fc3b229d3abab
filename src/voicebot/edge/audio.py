"""Audio at the edges of the device: decoding received sentences, and the sinks the player writes to.

Sinks play 16-bit mono PCM in small blocks so that a stop (a newer request, the stop word) takes effect at once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicebot.protocol import SentenceAudio

log = logging.getLogger(__name__)

BLOCK_SECONDS = 0.02


class AudioError(RuntimeError):
    pass


#: What a sentence's audio may claim about itself: a header saying 1 Hz would make seconds of data last hours (and
#: a resampler allocate gigabytes); 8 channels of a spoken sentence is a forgery.
MIN_RATE, MAX_RATE = 8_000, 48_000
MAX_CHANNELS = 2
MAX_SENTENCE_S = 120.0


def decode_sentence(sentence: SentenceAudio) -> tuple[np.ndarray, int]:
    """A sentence's audio as int16 mono samples and their rate (OGG Vorbis, WAV or raw 16-bit PCM).

    The container's own header is checked before anything is decoded: rate 8-48 kHz, at most 2 channels, at most
    two minutes."""
    if not sentence.data:
        return np.zeros(0, dtype=np.int16), sentence.sample_rate
    if sentence.format == "pcm_s16le":
        even = sentence.data[: len(sentence.data) // 2 * 2]
        if len(even) / 2 / sentence.sample_rate > MAX_SENTENCE_S:
            raise AudioError(f"seq {sentence.seq} is over {MAX_SENTENCE_S:.0f} s of audio")
        return np.frombuffer(even, dtype="<i2").astype(np.int16), sentence.sample_rate
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(sentence.data))
        if not MIN_RATE <= info.samplerate <= MAX_RATE or not 1 <= info.channels <= MAX_CHANNELS \
                or info.frames / info.samplerate > MAX_SENTENCE_S:
            raise AudioError(f"{sentence.format} audio of seq {sentence.seq} claims {info.samplerate} Hz, "
                             f"{info.channels} channels, {info.frames} frames: refused")
        samples, rate = sf.read(io.BytesIO(sentence.data), dtype="int16", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        if isinstance(exc, AudioError):
            raise
        raise AudioError(f"cannot decode {sentence.format} audio of seq {sentence.seq}: {exc}") from exc
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1).astype(np.int16)
    return mono, int(rate)


def to_rate(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or samples.size == 0:
        return samples
    import soxr

    return soxr.resample(samples, rate, target)


def apply_volume(samples: np.ndarray, volume: float) -> np.ndarray:
    if volume >= 0.999:
        return samples
    return np.clip(samples.astype(np.float32) * max(0.0, volume), -32768, 32767).astype(np.int16)


class AudioSink(Protocol):
    sample_rate: int
    seconds_played: float

    async def play(self, samples: np.ndarray) -> None:
        """Play int16 mono samples at ``sample_rate``. Cancelling the task stops within one block."""

    def close(self) -> None: ...


def _blocks(samples: np.ndarray, rate: int):
    step = max(1, int(rate * BLOCK_SECONDS))
    for i in range(0, len(samples), step):
        yield samples[i : i + step]


class NullSink:
    """Plays nothing, but takes as long as the audio lasts (for benchmarks and headless runs)."""

    def __init__(self, *, sample_rate: int = 16_000, realtime: bool = True) -> None:
        self.sample_rate = sample_rate
        self.realtime = realtime
        self.seconds_played = 0.0

    async def play(self, samples: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, block in enumerate(_blocks(samples, self.sample_rate)):
            self.seconds_played += len(block) / self.sample_rate
            if self.realtime:
                # Pace against the clock, not per block, so the total duration does not drift.
                await asyncio.sleep(max(0.0, start + (i + 1) * BLOCK_SECONDS - loop.time()))

    def close(self) -> None:
        pass


class WavSink:
    """Writes exactly what was played, in order, to a 16-bit mono WAV file."""

    def __init__(self, path: str | Path, *, sample_rate: int = 16_000, realtime: bool = False) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self.realtime = realtime
        self.seconds_played = 0.0
        self._file = sf.SoundFile(str(self.path), mode="w", samplerate=sample_rate, channels=1, subtype="PCM_16")
        self._pacer = NullSink(sample_rate=sample_rate, realtime=True) if realtime else None

    async def play(self, samples: np.ndarray) -> None:
        for block in _blocks(samples, self.sample_rate):
            self._file.write(block)
            self.seconds_played += len(block) / self.sample_rate
            if self._pacer:
                await self._pacer.play(block)
            else:
                await asyncio.sleep(0)  # a cancellation point between blocks
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


@dataclass(frozen=True)
class DeviceInfo:
    kind: str
    """"input" or "output"."""
    name: str
    """Exactly what to write after ``device:`` / ``mic:`` (an exact name wins over partial matches)."""
    channels: int
    sample_rate: int
    default: bool


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio missing
        raise AudioError(f"sounddevice cannot load PortAudio ({exc}); install libportaudio2") from exc
    return sd


def list_devices() -> list[DeviceInfo]:
    """Every PortAudio input and output, as ``voicebot devices`` prints them."""
    sd = _sounddevice()
    default_in, default_out = sd.default.device
    out = []
    for index, d in enumerate(sd.query_devices()):
        for kind, default in (("output", default_out), ("input", default_in)):
            if d[f"max_{kind}_channels"] > 0:
                out.append(DeviceInfo(kind, d["name"], int(d[f"max_{kind}_channels"]), int(d["default_samplerate"]),
                                      index == default))
    return out


def find_device(device: str | int | None, kind: str) -> tuple[Any, str | int | None, Any]:
    """PortAudio device by name fragment or index (``kind`` is "input" or "output"); a wrong one lists the choices."""
    sd = _sounddevice()
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    try:
        return sd, device, sd.query_devices(device, kind)
    except (ValueError, sd.PortAudioError) as exc:
        names = [d["name"] for d in sd.query_devices() if d[f"max_{kind}_channels"] > 0]
        raise AudioError(f"no {kind} device {device!r}; available: {names}") from exc


class SoundDeviceSink:
    """A real speaker through PortAudio (sounddevice). ``device`` is a name fragment or an index."""

    def __init__(self, device: str | int | None = None, *, sample_rate: int | None = None) -> None:
        sd, device, info = find_device(device, "output")
        self.sample_rate = int(sample_rate or info["default_samplerate"])
        self.seconds_played = 0.0
        self._stream = sd.RawOutputStream(samplerate=self.sample_rate, channels=1, dtype="int16", device=device,
                                          blocksize=int(self.sample_rate * BLOCK_SECONDS))
        self._stream.start()

    @property
    def latency_s(self) -> float:
        """How long after it is written a sample is heard (the output's buffer): the echo canceller's far end is
        stamped with it."""
        return float(self._stream.latency)

    async def play(self, samples: np.ndarray) -> None:
        for block in _blocks(samples, self.sample_rate):
            await asyncio.to_thread(self._stream.write, block.tobytes())
            self.seconds_played += len(block) / self.sample_rate

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


def open_sink(spec: str, *, realtime: bool = False) -> AudioSink:
    """``device[:NAME]``, ``wav:PATH`` or ``null`` (as on the command line). ``realtime``: a WAV sink takes as long
    as a speaker would (a null sink always does)."""
    kind, _, arg = spec.partition(":")
    if kind == "device":
        return SoundDeviceSink(arg or None)
    if kind == "wav":
        if not arg:
            raise AudioError("wav sink needs a path: --sink wav:PATH")
        try:
            return WavSink(arg, realtime=realtime)
        except (OSError, RuntimeError) as exc:  # (soundfile raises RuntimeError for a path it cannot open)
            raise AudioError(f"cannot write the wav sink {arg!r}: {exc}") from exc
    if kind == "null":
        return NullSink()
    raise AudioError(f"unknown sink {spec!r} (device[:NAME], wav:PATH or null)")


# --------------------------------------------------------------------------------------------------------------------
# Sources: 16 kHz mono 16-bit frames sized for the VAD
# --------------------------------------------------------------------------------------------------------------------

SOURCE_RATE = 16_000


class AudioSource(Protocol):
    description: str

    def frames(self) -> AsyncIterator[bytes]:
        """Frames of exactly ``frame_ms`` of 16 kHz mono int16 audio."""


class WavSource:
    """A WAV (or any libsndfile format) file, resampled to 16 kHz mono; paced in real time or as fast as possible.

    Read in half-second blocks, so a long recording costs no more memory than a short one.
    """

    def __init__(self, path: str | Path, *, frame_ms: int = 30, realtime: bool = False) -> None:
        import soundfile as sf

        self.path = Path(path)
        if not self.path.exists():
            raise AudioError(f"no such audio file: {self.path}")
        try:
            info = sf.info(str(self.path))
        except (RuntimeError, sf.LibsndfileError) as exc:
            raise AudioError(f"cannot read audio file {self.path}: {exc}") from exc
        self.description = f"wav:{self.path}"
        self.frame_ms = frame_ms
        self.realtime = realtime
        self.rate = int(info.samplerate)
        self.seconds = info.frames / info.samplerate

    def _pcm_blocks(self):
        import soundfile as sf
        import soxr

        resampler = None if self.rate == SOURCE_RATE else soxr.ResampleStream(self.rate, SOURCE_RATE, 1,
                                                                              dtype="float32")
        with sf.SoundFile(str(self.path)) as f:
            for block in f.blocks(blocksize=max(1, self.rate // 2), dtype="float32", always_2d=True):
                mono = block.mean(axis=1)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                yield np.clip(mono * 32767.0, -32768, 32767).astype("<i2").tobytes()
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            yield np.clip(tail * 32767.0, -32768, 32767).astype("<i2").tobytes()

    async def frames(self) -> AsyncIterator[bytes]:
        size = SOURCE_RATE * self.frame_ms // 1000 * 2
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending = b""
        sent = 0
        for block in self._pcm_blocks():
            pending += block
            while len(pending) >= size:
                frame, pending = pending[:size], pending[size:]
                yield frame
                sent += 1
                if self.realtime:
                    await asyncio.sleep(max(0.0, start + sent * self.frame_ms / 1000 - loop.time()))
                else:
                    await asyncio.sleep(0)  # let the rest of the loop (publishes, partials) run


class FrameRing:
    """Blocks from the audio thread to the asyncio loop, at most ``size`` of them: when the loop falls behind, the
    oldest blocks are dropped (and counted), the audio thread never blocks and nothing raises on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = 200) -> None:
        self.loop = loop
        self.blocks: deque[bytes] = deque(maxlen=size)
        self.dropped = 0
        self.ready = asyncio.Event()

    def push(self, block: bytes) -> None:
        """From the audio thread."""
        if len(self.blocks) == self.blocks.maxlen:
            self.dropped += 1
        self.blocks.append(block)  # deque appends and pops are atomic
        self.loop.call_soon_threadsafe(self.ready.set)

    async def get(self) -> bytes:
        while not self.blocks:
            self.ready.clear()
            if self.blocks:  # pushed between the check and the clear
                break
            await self.ready.wait()
        return self.blocks.popleft()


class MicSource:
    """A microphone through PortAudio. ``device`` is a name fragment or an index; a wrong one lists the choices."""

    def __init__(self, device: str | int | None = None, *, frame_ms: int = 30) -> None:
        sd, device, info = find_device(device, "input")
        self._sd = sd
        self.device = device
        self.native_rate = int(info["default_samplerate"])
        self.frame_ms = frame_ms
        self.description = f"mic:{info['name']}"
        self.last_captured_at: float | None = None

    async def frames(self) -> AsyncIterator[bytes]:
        import soxr

        ring = FrameRing(asyncio.get_running_loop())
        reported, reported_at = 0, float("-inf")
        rate = SOURCE_RATE
        try:
            self._sd.check_input_settings(device=self.device, samplerate=SOURCE_RATE, channels=1, dtype="int16")
        except Exception:
            rate = self.native_rate  # the device cannot do 16 kHz: capture natively and resample
        resampler = None if rate == SOURCE_RATE else soxr.ResampleStream(rate, SOURCE_RATE, 1, dtype="int16")

        def callback(indata, frames, time_info, status) -> None:  # PortAudio thread: hand off only
            if status:
                log.debug("microphone: %s", status)
            ring.push(bytes(indata))

        size = SOURCE_RATE * self.frame_ms // 1000 * 2
        pending = b""
        with self._sd.RawInputStream(samplerate=rate, channels=1, dtype="int16", device=self.device,
                                     blocksize=rate * self.frame_ms // 1000, callback=callback):
            while True:
                block = await ring.get()
                if ring.dropped != reported and time.monotonic() - reported_at > 10:  # one line per 10 s at most
                    log.warning("microphone: the loop fell behind; %d blocks dropped so far", ring.dropped)
                    reported, reported_at = ring.dropped, time.monotonic()
                if resampler is not None:
                    block = resampler.resample_chunk(np.frombuffer(block, dtype=np.int16)).tobytes()
                pending += block
                while len(pending) >= size:
                    # (for the echo canceller: when this frame's first sample was captured, as near as we know)
                    self.last_captured_at = time.monotonic() - len(pending) / 2 / SOURCE_RATE
                    yield pending[:size]
                    pending = pending[size:]


def open_source(spec: str, *, frame_ms: int = 30, realtime: bool = False) -> AudioSource:
    """``mic[:NAME]`` or ``wav:PATH`` (as on the command line). ``realtime``: a WAV source delivers its frames as a
    microphone would, one every ``frame_ms``."""
    kind, _, arg = spec.partition(":")
    if kind == "mic":
        return MicSource(arg or None, frame_ms=frame_ms)
    if kind == "wav":
        if not arg:
            raise AudioError("wav source needs a path: --source wav:PATH")
        return WavSource(arg, frame_ms=frame_ms, realtime=realtime)
    raise AudioError(f"unknown source {spec!r} (mic[:NAME] or wav:PATH)")
