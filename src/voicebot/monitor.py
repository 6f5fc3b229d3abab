"""``voicebot monitor``: every message under ``R/#`` as one legible line, plus a latency line per finished request.

What the IoT console's MQTT test client shows when you subscribe to ``voicebot/#``, but with Korean text, short
request ids, audio summarised as seq/part/size/duration, and the timing of each turn.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from voicebot.protocol import (
    AudioAssembler,
    AudioMessage,
    ProtocolError,
    SentenceAudio,
    decode,
    parse_json,
    parse_topic,
)

#: Requests the monitor times at once (a busy fleet has a few; the rest are long over).
MAX_OPEN_TURNS = 256

def short(request_id: object) -> str:
    return str(request_id)[-8:] if request_id else "-"


def _audio_seconds(message: dict, size: int) -> str:
    fmt, rate = message.get("format"), message.get("sampleRate") or 16_000
    if fmt == "pcm_s16le":
        return f" {size / 2 / rate:.2f} s"
    if fmt == "wav" and message.get("parts", 1) == 1 and size > 44:
        return f" {(size - 44) / 2 / rate:.2f} s"
    return ""


@dataclass
class _Turn:
    heard_at: float
    thing: str
    marks: dict[str, float] = field(default_factory=dict)


def _speech_seconds(sentence: SentenceAudio) -> float | None:
    """Seconds of speech in a reassembled sentence (PCM by its size; WAV and OGG by their header)."""
    if sentence.format == "pcm_s16le":
        return len(sentence.data) / 2 / sentence.sample_rate
    try:
        import soundfile

        return float(soundfile.info(io.BytesIO(sentence.data)).duration)
    except Exception:  # not decodable here: no duration rather than no line
        return None


@dataclass
class MonitorFormatter:
    """Turns (topic, payload) into lines. Pure apart from the clock, so tests feed it recorded messages.

    ``partial``: whether the last message was a partial transcript (a terminal shows it in place). The player's
    "speaking" heartbeat (every 2 s) is shown once per request, not every time.
    """

    clock: Callable[[], float] = time.time
    turns: dict[str, _Turn] = field(default_factory=dict)
    partial: bool = False
    _states: dict[str, tuple[object, object]] = field(default_factory=dict)
    _assembler: AudioAssembler = field(default_factory=AudioAssembler)
    _assembling: deque[str] = field(default_factory=deque)

    def lines(self, topic: str, payload: bytes) -> list[str]:
        now = self.clock()
        self.partial = False
        stamp = datetime.fromtimestamp(now).strftime("%H:%M:%S.%f")[:-3]
        try:
            where = parse_topic(topic)
            message = parse_json(payload, limit=1 << 20)
        except ProtocolError as exc:
            return [f"{stamp} {topic}  (unreadable: {exc.message})"]
        thing, kind = where.thing, where.kind
        rid = message.get("requestId")
        head = f"{stamp} {thing:<14} {kind:<10} {short(rid)}"
        out: list[str] = []
        if kind == "transcript":
            out.append(f"{head} {message.get('state', '?'):<10} \u201c{message.get('text', '')}\u201d")
            self.partial = message.get("state") == "proceeding"
            if message.get("state") == "completed" and rid:
                self.turns[rid] = _Turn(now, thing)
                while len(self.turns) > MAX_OPEN_TURNS:  # turns that never end (no "played") must not pile up
                    self.turns.pop(next(iter(self.turns)))
        elif kind == "answer":
            tail = " (last)" if message.get("last") else ""
            out.append(f"{head} seq {message.get('seq')}{tail}  {message.get('text', '')}")
            self._mark(rid, "answer", now)
        elif kind == "audio":
            try:
                size = len(base64.b64decode(message.get("audio", ""), validate=True))
            except ValueError:
                size = 0
            whole = self._whole_sentence(payload) if message.get("parts", 1) > 1 else None
            out.append(f"{head} seq {message.get('seq')} part {message.get('part', 0) + 1}/{message.get('parts', 1)} "
                       f"{message.get('format')} {size / 1024:.1f} KB{_audio_seconds(message, size)}"
                       + (f" = {whole:.2f} s of speech" if whole is not None else "")
                       + (" (last)" if message.get("last") else ""))
            self._mark(rid, "audio", now)
        elif kind == "event":
            seq = f" seq {message['seq']}" if message.get("seq") is not None else ""
            detail = f"  {message['detail']}" if message.get("detail") else ""
            out.append(f"{head} {message.get('source')}: {message.get('type')}{seq}{detail}")
            if message.get("type") == "playing":
                self._mark(rid, "playing", now)
            if message.get("type") in ("played", "interrupted", "cancelled") and message.get("seq") is None:
                out += self._finish(rid, now)
        elif kind in ("player", "control", "command"):
            if kind == "player":  # the heartbeat repeats the state every 2 s: once per change is enough
                state = (message.get("state"), rid)
                if self._states.get(thing) == state:
                    return []
                self._states[thing] = state
                while len(self._states) > MAX_OPEN_TURNS:
                    self._states.pop(next(iter(self._states)))
            fields = {k: v for k, v in message.items() if k not in ("v", "ts", "requestId")}
            out.append(f"{head} {json.dumps(fields, ensure_ascii=False)}")
        else:
            out.append(f"{head} {json.dumps(message, ensure_ascii=False)[:200]}")
        return out

    def _whole_sentence(self, payload: bytes) -> float | None:
        """When the last part of a multi-part sentence arrives: its seconds of speech."""
        try:
            message = decode(AudioMessage, payload)
            sentence = self._assembler.add(message)
        except ProtocolError:
            return None
        if message.request_id not in self._assembling:  # bounded: a monitor runs for as long as anyone watches
            self._assembling.append(message.request_id)
            if len(self._assembling) > MAX_OPEN_TURNS:
                self._assembler.forget([self._assembling.popleft()])
        return _speech_seconds(sentence) if sentence is not None else None

    def _mark(self, rid: str | None, name: str, now: float) -> None:
        if rid in self.turns:
            self.turns[rid].marks.setdefault(name, now)

    def _finish(self, rid: str | None, now: float) -> list[str]:
        turn = self.turns.pop(rid, None) if rid else None
        if turn is None:
            return []

        def ms(name: str) -> str:
            return f"+{(turn.marks[name] - turn.heard_at) * 1000:.0f} ms" if name in turn.marks else "-"

        return [f"{'':>12} {turn.thing:<14} latency {short(rid)}: first answer {ms('answer')}, first audio {ms('audio')}, "
                f"playing {ms('playing')}, done +{(now - turn.heard_at) * 1000:.0f} ms"]
