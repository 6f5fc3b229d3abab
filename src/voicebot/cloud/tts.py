"""Text to speech behind one interface: Amazon Polly in the cloud, espeak-ng offline."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol
from xml.sax.saxutils import escape

from voicebot.protocol import AudioFormat

log = logging.getLogger(__name__)


class TtsError(RuntimeError):
    """The sentence could not be synthesized (the player skips it at once)."""


@dataclass(frozen=True)
class SynthesizedAudio:
    data: bytes
    format: AudioFormat
    sample_rate: int


class Tts(Protocol):
    name: str

    def synthesize(self, text: str) -> SynthesizedAudio: ...


def pcm_to_wav(samples: Any, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class EspeakTts:
    """espeak-ng's Korean voice, resampled to 16 kHz mono WAV. Synthetic-sounding, but offline and fast."""

    name = "espeak-ng"

    def __init__(self, *, voice: str = "ko", words_per_minute: int = 190, sample_rate: int = 16_000) -> None:
        self.exe = shutil.which("espeak-ng")
        if self.exe is None:
            raise TtsError("espeak-ng is not installed: run `make demo` (it installs it) or `apt-get install espeak-ng`")
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.sample_rate = sample_rate

    def synthesize(self, text: str) -> SynthesizedAudio:
        import numpy as np
        import soundfile as sf
        import soxr

        try:
            # The text goes through stdin: no shell, no argument parsing of what the model said.
            proc = subprocess.run(
                [self.exe, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout"],
                input=text.encode("utf-8"), capture_output=True, timeout=30, check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise TtsError(f"espeak-ng failed: {exc}") from exc
        samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
        if rate != self.sample_rate:
            mono = soxr.resample(mono, rate, self.sample_rate)
        pcm = np.clip(mono * 32767.0, -32768, 32767).astype(np.int16)
        return SynthesizedAudio(pcm_to_wav(pcm, self.sample_rate), "wav", self.sample_rate)


# Characters XML 1.0 cannot hold even escaped (control characters, lone surrogates, U+FFFE/U+FFFF): Polly rejects
# the whole SSML document for one of them, so they are dropped.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_RATE = re.compile(r"^(\d{1,3})%$")


def speech_rate(rate: str) -> str:
    """A prosody rate Polly accepts: a percentage from 20% to 200%."""
    m = _RATE.match(rate.strip())
    if not m or not 20 <= int(m.group(1)) <= 200:
        raise ValueError(f"speech rate {rate!r} must be a percentage from 20% to 200% (Polly's prosody limits)")
    return f"{int(m.group(1))}%"


def ssml_for(text: str, rate: str) -> str:
    """Polly SSML with every character of the text escaped (<, >, &, quotes) and XML-forbidden ones removed."""
    safe = escape(_NOT_XML.sub("", text), {'"': "&quot;", "'": "&apos;"})
    return f'<speak><prosody rate="{speech_rate(rate)}">{safe}</prosody></speak>'


class PollyTts:
    """Amazon Polly neural voice (Seoyeon, ko-KR) through SSML; OGG Vorbis by default, 16 kHz PCM as an option."""

    name = "polly"

    def __init__(self, client: Any, *, voice_id: str = "Seoyeon", rate: str = "120%", output_format: str = "ogg_vorbis",
                 engine: str = "neural") -> None:
        if output_format not in ("ogg_vorbis", "pcm"):
            raise ValueError(f"unsupported Polly output format {output_format!r}")
        self.client = client
        self.voice_id = voice_id
        self.rate = speech_rate(rate)  # a wrong SPEECH_RATE fails at the cold start, not on every sentence
        self.output_format = output_format
        self.engine = engine
        self.sample_rate = 24_000 if output_format == "ogg_vorbis" else 16_000

    def synthesize(self, text: str) -> SynthesizedAudio:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.synthesize_speech(
                Engine=self.engine, LanguageCode="ko-KR", VoiceId=self.voice_id, OutputFormat=self.output_format,
                SampleRate=str(self.sample_rate), TextType="ssml", Text=ssml_for(text, self.rate),
            )
            data = resp["AudioStream"].read()
        except (BotoCoreError, ClientError) as exc:
            raise TtsError(f"Polly could not synthesize the sentence: {exc}") from exc
        fmt: AudioFormat = "ogg_vorbis" if self.output_format == "ogg_vorbis" else "pcm_s16le"
        return SynthesizedAudio(data, fmt, self.sample_rate)


def polly_client(region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    # Adaptive retries absorb Polly throttling (a burst of sentences from many devices). total_max_attempts counts the
    # first try; the timeouts keep 4 attempts inside the speech function's 30 s.
    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "adaptive", "total_max_attempts": 4})
    return boto3.client("polly", region_name=region, config=config)


def build_tts(name: str) -> Tts:
    """``espeak`` (offline) or ``polly`` (Amazon Polly; needs AWS credentials), as on the command line."""
    if name == "espeak":
        return EspeakTts()
    if name == "polly":
        from voicebot.cloud.llm import aws_credentials_available

        if not aws_credentials_available():
            raise TtsError("--tts polly needs AWS credentials (aws configure, or AWS_PROFILE / AWS_ACCESS_KEY_ID) and "
                           "AWS_REGION")
        return PollyTts(polly_client())
    raise TtsError(f"unknown speech synthesis {name!r} (espeak or polly)")
