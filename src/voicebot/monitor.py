"""``voicebot monitor``: every message under ``R/#`` as one legible line, plus a latency line per finished request.

What the IoT console's MQTT test client shows when you subscribe to ``voicebot/#``, but with Korean text, short
request ids, audio summarised as seq/part/size/duration, and the timing of each turn.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from voicebot.protocol import ProtocolError, parse_json, parse_topic

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
    marks: dict[str, float] = field(default_factory=dict)


@dataclass
class MonitorFormatter:
    """Turns (topic, payload) into lines. Pure apart from the clock, so tests feed it recorded messages."""

    clock: Callable[[], float] = time.time
    turns: dict[str, _Turn] = field(default_factory=dict)

    def lines(self, topic: str, payload: bytes) -> list[str]:
        now = self.clock()
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
            if message.get("state") == "completed" and rid:
                self.turns[rid] = _Turn(now)
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
            out.append(f"{head} seq {message.get('seq')} part {message.get('part', 0) + 1}/{message.get('parts', 1)} "
                       f"{message.get('format')} {size / 1024:.1f} KB{_audio_seconds(message, size)}"
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
            fields = {k: v for k, v in message.items() if k not in ("v", "ts", "requestId")}
            out.append(f"{head} {json.dumps(fields, ensure_ascii=False)}")
        else:
            out.append(f"{head} {json.dumps(message, ensure_ascii=False)[:200]}")
        return out

    def _mark(self, rid: str | None, name: str, now: float) -> None:
        if rid in self.turns:
            self.turns[rid].marks.setdefault(name, now)

    def _finish(self, rid: str | None, now: float) -> list[str]:
        turn = self.turns.pop(rid, None) if rid else None
        if turn is None:
            return []

        def ms(name: str) -> str:
            return f"+{(turn.marks[name] - turn.heard_at) * 1000:.0f} ms" if name in turn.marks else "-"

        return [f"{'':>12} latency {short(rid)}: first answer {ms('answer')}, first audio {ms('audio')}, "
                f"playing {ms('playing')}, done +{(now - turn.heard_at) * 1000:.0f} ms"]
