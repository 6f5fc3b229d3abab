"""What the conversation console knows: every device's turns, built from the messages under ``R/#``. Pure (no I/O,
time passed in), bounded everywhere (devices, turns per device, sentences per turn, bytes of audio), and never raises
for a message: a malformed one is counted and noted, and the rest goes on."""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from voicebot.protocol import (
    AnswerMessage,
    AudioAssembler,
    AudioMessage,
    ControlMessage,
    EventMessage,
    PlayerStateMessage,
    ProtocolError,
    SentenceAudio,
    TranscriptMessage,
    decode,
    is_device_local,
    parse_topic,
)

MAX_DEVICES = 200
MAX_TURNS = 20  # per device: the page and the server keep the latest ones
MAX_SENTENCES = 64
MAX_AUDIO_BYTES = 4 << 20  # per device: the audio of its latest turns, for the play buttons


@dataclass
class Turn:
    request_id: str
    question: str = ""
    final: bool = False
    replaces: str | None = None
    status: str = "open"  # open | answered | withdrawn | superseded | cancelled | interrupted
    sentences: dict[int, str] = field(default_factory=dict)
    audio: dict[int, SentenceAudio] = field(default_factory=dict)
    last_seq: int | None = None
    errors: list[str] = field(default_factory=list)
    apology: str | None = None
    marks: dict[str, int] = field(default_factory=dict)  # stage -> epoch ms (speech_end, transcript, ...)

    def view(self, thing: str) -> dict[str, Any]:
        base = self.marks.get("speech_end") or self.marks.get("transcript")
        return {
            "requestId": self.request_id, "question": self.question, "final": self.final,
            "replaces": self.replaces, "status": self.status, "apology": self.apology, "errors": self.errors[-5:],
            "sentences": [{"seq": seq, "text": text, "audio": f"audio/{thing}/{self.request_id}/{seq}"
                           if seq in self.audio else None} for seq, text in sorted(self.sentences.items())],
            "done": self.last_seq is not None and all(s in self.sentences for s in range(self.last_seq + 1)),
            "wholeAudio": f"audio/{thing}/{self.request_id}" if self.audio else None,
            "waterfall": {k: v - base for k, v in self.marks.items()} if base else {},
        }


@dataclass
class Device:
    thing: str
    state: str = "listening"
    last_seen: int = 0
    turns: OrderedDict[str, Turn] = field(default_factory=OrderedDict)
    assembler: AudioAssembler = field(default_factory=AudioAssembler)
    error: str | None = None

    def turn(self, request_id: str) -> Turn:
        turn = self.turns.get(request_id)
        if turn is None:
            turn = self.turns[request_id] = Turn(request_id)
            while len(self.turns) > MAX_TURNS:
                old, _ = self.turns.popitem(last=False)
                self.assembler.forget([old])
        return turn

    def audio_bytes(self) -> int:
        return sum(len(a.data) for t in self.turns.values() for a in t.audio.values())

    def view(self) -> dict[str, Any]:
        return {"thing": self.thing, "state": self.state, "lastSeen": self.last_seen, "error": self.error,
                "turns": [t.view(self.thing) for t in self.turns.values()]}


class ConsoleState:
    def __init__(self) -> None:
        self.devices: OrderedDict[str, Device] = OrderedDict()
        self.skipped = 0
        self.last_skip: str | None = None

    def device(self, thing: str) -> Device:
        device = self.devices.get(thing)
        if device is None:
            device = self.devices[thing] = Device(thing)
            while len(self.devices) > MAX_DEVICES:
                self.devices.popitem(last=False)
        else:
            self.devices.move_to_end(thing)
        return device

    def on_message(self, topic: str, payload: bytes, now_ms: int) -> str | None:
        """Apply one message; the thing whose view changed, or None (a malformed message is skipped with a note)."""
        if is_device_local(topic) and topic.endswith("/reference"):  # (the echo canceller's far end: not shown)
            return None
        try:
            where = parse_topic(topic)
            device = self.device(where.thing)
            device.last_seen = now_ms
            self._apply(device, where.kind, payload, now_ms)
            return where.thing
        except (ProtocolError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            self.skipped += 1
            self.last_skip = f"{topic[:80]}: {str(exc)[:200]}"
            return None

    def _apply(self, device: Device, kind: str, payload: bytes, now: int) -> None:
        if kind == "transcript":
            m = decode(TranscriptMessage, payload)
            turn = device.turn(m.request_id)
            turn.question, turn.final = m.text, m.state == "completed"
            if turn.final:
                turn.marks.setdefault("transcript", now)
                if m.speech_end_ts:
                    turn.marks["speech_end"] = min(m.speech_end_ts, now)
                if m.replaces and m.replaces in device.turns:
                    device.turns[m.replaces].status = "superseded"
                turn.replaces = m.replaces
        elif kind == "answer":
            m = decode(AnswerMessage, payload)
            turn = device.turn(m.request_id)
            if m.text and len(turn.sentences) < MAX_SENTENCES:
                turn.sentences[m.seq] = m.text
                turn.marks.setdefault("first_sentence", now)
            if m.last:
                turn.last_seq = m.seq
        elif kind == "audio":
            m = decode(AudioMessage, payload)
            turn = device.turn(m.request_id)
            sentence = device.assembler.add(m)
            if sentence is not None and sentence.data and device.audio_bytes() + len(sentence.data) <= MAX_AUDIO_BYTES:
                turn.audio[sentence.seq] = sentence
                turn.marks.setdefault("first_audio", now)
            if m.text and m.seq not in turn.sentences and len(turn.sentences) < MAX_SENTENCES:
                turn.sentences[m.seq] = m.text  # (the answer topic is not always visible: the audio says it too)
        elif kind == "event":
            m = decode(EventMessage, payload)
            turn = device.turns.get(m.request_id) if m.request_id else None
            if m.type == "playing" and turn is not None:
                turn.marks.setdefault("playing", now)
                device.state = "speaking"
            elif m.type == "played" and m.seq is None and turn is not None:
                turn.status = "answered" if turn.status == "open" else turn.status
                device.state = "listening"
            elif m.type in ("cancelled", "interrupted") and turn is not None:
                turn.status = m.type
            elif m.type == "apology" and turn is not None:
                turn.apology = m.detail or "apology"
            if m.type == "error":
                line = f"{m.source}: {m.detail or 'error'}"
                device.error = line
                if turn is not None:
                    turn.errors = [*turn.errors[-9:], line]
        elif kind == "player":
            state = decode(PlayerStateMessage, payload).state
            device.state = "speaking" if state == "speaking" else "listening"
        elif kind == "control":
            m = decode(ControlMessage, payload)
            if m.action == "cancel" and m.request_id in device.turns:
                turn = device.turns[m.request_id]
                turn.status = "withdrawn" if turn.status == "open" else turn.status

    def view(self) -> dict[str, Any]:
        return {"devices": [d.view() for d in self.devices.values()], "skipped": self.skipped,
                "lastSkip": self.last_skip}

    def audio(self, thing: str, request_id: str, seq: int | None) -> tuple[bytes, str] | None:
        """A sentence's audio (or the whole answer's) as a file the browser plays: (bytes, content type)."""
        device = self.devices.get(thing)
        turn = device.turns.get(request_id) if device else None
        if turn is None or not turn.audio:
            return None
        if seq is not None:
            sentence = turn.audio.get(seq)
            return playable(sentence) if sentence else None
        return whole_answer([turn.audio[s] for s in sorted(turn.audio)])


def playable(sentence: SentenceAudio) -> tuple[bytes, str]:
    if sentence.format == "ogg_vorbis":
        return sentence.data, "audio/ogg"
    if sentence.format == "wav":
        return sentence.data, "audio/wav"
    return _wav(sentence.data, sentence.sample_rate), "audio/wav"  # raw PCM: give it a header


def whole_answer(sentences: list[SentenceAudio]) -> tuple[bytes, str]:
    """The answer's sentences, one after another, as one WAV (decoded, resampled to the first one's rate)."""
    import numpy as np
    import soundfile as sf

    from voicebot.edge.audio import decode_sentence, to_rate

    rate = 16_000
    pieces = [to_rate(*decode_sentence(s), rate) for s in sentences]
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16), rate, format="WAV",
             subtype="PCM_16")
    return buf.getvalue(), "audio/wav"


def _wav(pcm: bytes, rate: int) -> bytes:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()

