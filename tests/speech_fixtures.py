"""Korean speech made here with espeak-ng (synthetic: good for the flow of events, not for transcript accuracy)."""

from __future__ import annotations

import io
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16_000


@cache
def spoken(text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", "ko", "--stdout"], input=text.encode(), capture_output=True,
                         check=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def in_room(samples: np.ndarray, dbfs: float = -60.0, seed: int = 0) -> np.ndarray:
    """As a microphone in a quiet room hears it: a noise floor, never digital silence."""
    noise = np.random.default_rng(seed).normal(0.0, 10 ** (dbfs / 20), samples.size)
    return (samples + noise).astype(np.float32)


def write_wav(path: Path, *pieces: np.ndarray) -> Path:
    sf.write(path, np.concatenate(pieces), RATE, subtype="PCM_16")
    return path


def frames_of(samples: np.ndarray, frame_ms: int = 30) -> list[bytes]:
    pcm = np.clip(samples * 32767, -32768, 32767).astype("<i2").tobytes()
    size = RATE * frame_ms // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]
