"""Audio in parts: one sentence's audio split into messages under the size limit, and put back together in any order."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass

from voicebot.protocol import MAX_MESSAGE_BYTES, AudioFormat, AudioMessage, ProtocolError, encode
from voicebot.request_ids import now_ms


def split_audio(
    *,
    request_id: str,
    seq: int,
    last: bool,
    text: str,
    audio: bytes,
    format: AudioFormat,
    sample_rate: int,
    limit: int = MAX_MESSAGE_BYTES,
) -> list[AudioMessage]:
    """Cut one sentence's encoded audio into messages that each encode to at most ``limit`` bytes."""
    ts = now_ms()

    def make(part: int, parts: int, chunk: bytes) -> AudioMessage:
        return AudioMessage(
            request_id=request_id, seq=seq, last=last, part=part, parts=parts, format=format,
            sample_rate=sample_rate, text=text, audio=base64.b64encode(chunk).decode("ascii"), ts=ts,
        )

    # Overhead = everything but the base64 body (with generous room for multi-digit part counters).
    overhead = len(encode(make(0, 1, b""), limit=1 << 30)) + 16
    room = limit - overhead
    if room < 4:
        raise ProtocolError("text", f"the sentence text alone leaves no room for audio under {limit} bytes")
    chunk_size = (room // 4) * 3  # base64: 3 bytes -> 4 characters
    chunks = [audio[i : i + chunk_size] for i in range(0, len(audio), chunk_size)] or [b""]
    messages = [make(i, len(chunks), c) for i, c in enumerate(chunks)]
    for m in messages:
        encode(m, limit=limit)  # proves the bound; raises rather than publish something IoT Core would refuse
    return messages


@dataclass(frozen=True)
class SentenceAudio:
    """One sentence's complete encoded audio, reassembled from its parts."""

    request_id: str
    seq: int
    last: bool
    text: str
    format: AudioFormat
    sample_rate: int
    data: bytes


class AudioAssembler:
    """Collects audio parts in any order, tolerating duplicates, and yields each sentence once when complete."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], dict[int, AudioMessage]] = {}
        self._done: set[tuple[str, int]] = set()

    def add(self, message: AudioMessage) -> SentenceAudio | None:
        key = (message.request_id, message.seq)
        if key in self._done:
            return None
        parts = self._parts.setdefault(key, {})
        parts.setdefault(message.part, message)
        first = next(iter(parts.values()))
        if message.parts != first.parts:
            raise ProtocolError("parts", f"seq {message.seq} announced {first.parts} parts, then {message.parts}")
        if len(parts) < message.parts:
            return None
        del self._parts[key]
        self._done.add(key)
        ordered = [parts[i] for i in range(message.parts)]
        return SentenceAudio(
            request_id=message.request_id, seq=message.seq, last=any(p.last for p in ordered), text=first.text,
            format=first.format, sample_rate=first.sample_rate, data=b"".join(p.audio_bytes() for p in ordered),
        )

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop partial state of superseded requests (bounded memory on a long-running device)."""
        gone = set(request_ids)
        self._parts = {k: v for k, v in self._parts.items() if k[0] not in gone}
        self._done = {k for k in self._done if k[0] not in gone}
