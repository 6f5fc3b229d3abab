"""The voicebot MQTT protocol, version 1: topics, message models, limits.

This is the one module that spells topic strings and message shapes. Every other part (device components, Lambdas,
local rules engine, monitor, benchmark) builds topics and encodes/decodes messages through it.

All JSON is UTF-8 with Korean left unescaped. Every message carries ``v`` (protocol version) and ``ts`` (epoch ms).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

VERSION = 1
DEFAULT_TOPIC_ROOT = "voicebot"
#: Largest encoded message we publish. IoT Core refuses anything over 128 KB; stay well under it.
MAX_MESSAGE_BYTES = 100_000
#: Longest transcript text accepted on the transcript topic (a spoken question is far shorter).
MAX_TRANSCRIPT_CHARS = 2_000
#: Longest single answer sentence.
MAX_SENTENCE_CHARS = 1_000
#: Highest sentence number of one answer, and most parts of one sentence's audio: a hostile "seq=100000, last"
#: must not make a device skip a hundred thousand sentences, nor "parts=10**9" hold parts forever.
MAX_SEQ = 999
MAX_PARTS = 100
#: Longest ``detail`` of an event: an error about a bad value quotes at most this much of it.
MAX_DETAIL_CHARS = 500

QOS_AT_MOST_ONCE = 0
QOS_AT_LEAST_ONCE = 1


class ProtocolError(ValueError):
    """A message that does not follow the protocol. ``field`` names the offending field ("" for the whole payload)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_id_lock = threading.Lock()
_id_last = (0, 0)  # (ms, counter) of the last id made in this process


def new_request_id() -> str:
    """A UUIDv7 string (RFC 9562): random, but sortable by creation time, so a greater requestId is a newer utterance.

    Within one millisecond a 12-bit counter keeps ids made by this process strictly increasing.
    """
    global _id_last
    with _id_lock:
        ms = now_ms()
        last_ms, counter = _id_last
        if ms <= last_ms:
            ms, counter = (last_ms, counter + 1) if counter < 0xFFF else (last_ms + 1, 0)
        else:
            counter = 0
        _id_last = (ms, counter)
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
#: How far ahead of this clock a request id's time may be and still count as a time (clocks of devices drift; an id
#: an hour ahead is a broken clock or a forgery, and must not make every later request look older).
CLOCK_SKEW_MS = 5 * 60_000


def request_id_time(request_id: str) -> int | None:
    """The creation time (epoch ms) inside a UUIDv7 request id, or None for any other id."""
    if not _UUID7.match(request_id):
        return None
    return int(request_id[:8] + request_id[9:13], 16)


def first_id_after(ms: int) -> str:
    """The UUIDv7 string every id made after ``ms`` sorts above (for range conditions in a store)."""
    h = f"{ms + 1:012x}"
    return f"{h[:8]}-{h[8:]}-7000-8000-000000000000"


def carries_time(request_id: str, *, now: int | None = None) -> bool:
    """A UUIDv7 id whose time is not implausibly far in the future: only such ids are ordered by time."""
    ms = request_id_time(request_id)
    return ms is not None and ms <= (now_ms() if now is None else now) + CLOCK_SKEW_MS


def known_newer(request_id: str, than: str) -> bool:
    """True only when both ids carry a sane time (UUIDv7, not from the future) and ``request_id`` is the later one."""
    return carries_time(request_id) and carries_time(than) and request_id > than


def is_newer(request_id: str, than: str | None) -> bool:
    """Whether ``request_id`` supersedes ``than``.

    UUIDv7 ids (what the interpreter makes) compare by the time inside them, so a late message of an older request
    can never cut off a newer one. Any other id (typed in a console, say), and an id from the future (see
    ``CLOCK_SKEW_MS``), counts as newer when it arrives and is superseded by whatever comes next.
    """
    if than is None or request_id == than:
        return request_id != than
    if carries_time(request_id) and carries_time(than):
        return request_id > than
    return True


# --------------------------------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------------------------------

Kind = Literal["transcript", "answer", "audio", "event", "command"]
LocalKind = Literal["player", "control"]
CLOUD_KINDS: tuple[Kind, ...] = ("transcript", "answer", "audio", "event", "command")
LOCAL_KINDS: tuple[LocalKind, ...] = ("player", "control")


def _check_segment(name: str, value: str) -> str:
    if not value or any(c in value for c in "/+#") or value.startswith("$"):
        raise ProtocolError(name, f"{value!r} is not a valid topic segment")
    return value


@dataclass(frozen=True)
class Topics:
    """Every topic of one device. ``root`` is the topic root (default ``voicebot``), ``thing`` the core's thing name."""

    root: str
    thing: str

    def __post_init__(self) -> None:
        for part in self.root.split("/"):
            _check_segment("topic root", part)
        _check_segment("thing", self.thing)

    def _t(self, kind: str) -> str:
        return f"{self.root}/{self.thing}/{kind}"

    @property
    def transcript(self) -> str:
        return self._t("transcript")

    @property
    def answer(self) -> str:
        return self._t("answer")

    @property
    def audio(self) -> str:
        return self._t("audio")

    @property
    def event(self) -> str:
        return self._t("event")

    @property
    def command(self) -> str:
        return self._t("command")

    @property
    def player_state(self) -> str:
        """Device-local: the player tells the interpreter whether it is speaking (echo guard)."""
        return f"{self.root}/local/{self.thing}/player"

    @property
    def control(self) -> str:
        """Device-local: the interpreter tells the player to stop (stop word)."""
        return f"{self.root}/local/{self.thing}/control"


def all_things_filter(root: str, kind: Kind) -> str:
    """``R/+/kind``: one kind of message from every device (what the IoT rules and the monitor subscribe to)."""
    return f"{root}/+/{kind}"


def everything_filter(root: str) -> str:
    return f"{root}/#"


def is_device_local(topic: str) -> bool:
    """Device-local topics never leave the device (Greengrass local pub/sub, not IoT Core)."""
    parts = topic.split("/")
    return len(parts) >= 4 and parts[-3] == "local"


@dataclass(frozen=True)
class ParsedTopic:
    root: str
    thing: str
    kind: str
    local: bool


def parse_topic(topic: str) -> ParsedTopic:
    """Split a voicebot topic into root, thing and kind. The thing from the topic is the only trusted device identity."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[-3] == "local":
        return ParsedTopic("/".join(parts[:-3]), parts[-2], parts[-1], True)
    if len(parts) < 3:
        raise ProtocolError("topic", f"{topic!r} is not a voicebot topic")
    return ParsedTopic("/".join(parts[:-2]), parts[-2], parts[-1], False)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` and ``#``."""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return True
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


# --------------------------------------------------------------------------------------------------------------------
# Message models
# --------------------------------------------------------------------------------------------------------------------


class Message(BaseModel):
    """Fields common to every message. JSON names are camelCase (``requestId``); Python names are snake_case."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    v: Literal[1] = VERSION
    ts: int = Field(default_factory=now_ms)


RequestId = Annotated[str, Field(min_length=1, max_length=64)]


class TranscriptMessage(Message):
    """``R/T/transcript``: what the person said. ``proceeding`` = partial, ``completed`` = one per utterance."""

    request_id: RequestId
    state: Literal["proceeding", "completed"]
    text: str = Field(max_length=MAX_TRANSCRIPT_CHARS)
    lang: str = "ko-KR"
    speech_end_ts: int | None = None


class AnswerMessage(Message):
    """``R/T/answer``: one sentence of the assistant's answer. An empty ``text`` is allowed only on the closing ``last``."""

    request_id: RequestId
    seq: int = Field(ge=0, le=MAX_SEQ)
    text: str = Field(max_length=MAX_SENTENCE_CHARS)
    last: bool = False

    @model_validator(mode="after")
    def _text_or_last(self) -> AnswerMessage:
        if not self.text.strip() and not self.last:
            raise ValueError("text is empty (only the closing message with last=true may be empty)")
        return self


AudioFormat = Literal["ogg_vorbis", "pcm_s16le", "wav"]


class AudioMessage(Message):
    """``R/T/audio``: one part of one sentence's audio. Parts joined in ``part`` order are the sentence's whole audio."""

    request_id: RequestId
    seq: int = Field(ge=0, le=MAX_SEQ)
    last: bool = False
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1, le=MAX_PARTS)
    format: AudioFormat
    sample_rate: int = Field(ge=8_000, le=48_000)
    text: str = Field(default="", max_length=MAX_SENTENCE_CHARS)
    audio: str = ""

    @model_validator(mode="after")
    def _part_in_range(self) -> AudioMessage:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} is not below parts {self.parts}")
        return self

    def audio_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.audio, validate=True)
        except ValueError as exc:
            raise ProtocolError("audio", "is not valid base64") from exc


EventType = Literal[
    "playing", "played", "skipped", "interrupted", "cancelled", "error", "listening", "speech_start", "speech_end",
    "started", "stopped", "volume",
]


class EventMessage(Message):
    """``R/T/event``: something a person watching the device would want to know."""

    source: str = Field(max_length=32)
    type: EventType
    request_id: RequestId | None = None
    seq: int | None = Field(default=None, ge=0, le=MAX_SEQ)
    last: bool | None = None
    detail: str | None = None

    @field_validator("detail", mode="before")
    @classmethod
    def _short_detail(cls, value: Any) -> Any:
        """Cut, never refuse: an error report about a huge bad value must still fit in one message."""
        if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
            return value[: MAX_DETAIL_CHARS - 1] + "…"
        return value


class PlayerStateMessage(Message):
    """``R/local/T/player``: the player is speaking or idle (the interpreter mutes its microphone while speaking)."""

    state: Literal["speaking", "idle"]
    request_id: str | None = None


class ControlMessage(Message):
    """``R/local/T/control``: the interpreter heard the stop word."""

    action: Literal["cancel"]
    request_id: str | None = None


class CommandMessage(Message):
    """``R/T/command``: from the console or cloud to the device."""

    action: Literal["cancel", "volume"]
    value: float | None = Field(default=None, ge=0.0, le=1.0)
    request_id: str | None = None

    @model_validator(mode="after")
    def _volume_has_value(self) -> CommandMessage:
        if self.action == "volume" and self.value is None:
            raise ValueError("volume needs a value between 0.0 and 1.0")
        return self


class ChatEvent(TranscriptMessage):
    """What the chat rule hands the chat Lambda: the transcript's fields plus ``thing`` from ``topic(2)``."""

    thing: str


class SpeechEvent(AnswerMessage):
    """What the speech rule hands the speech Lambda: the answer's fields plus ``thing`` from ``topic(2)``."""

    thing: str


M = TypeVar("M", bound=Message)


# --------------------------------------------------------------------------------------------------------------------
# Encode / decode
# --------------------------------------------------------------------------------------------------------------------


def encode(message: Message, *, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """UTF-8 JSON with Korean unescaped. Raises ProtocolError if the result would exceed ``limit`` bytes."""
    data = message.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")
    if len(data) > limit:
        raise ProtocolError("", f"encoded {type(message).__name__} is {len(data)} bytes, over the {limit}-byte limit")
    return data


def to_json_dict(message: Message) -> dict[str, Any]:
    return message.model_dump(by_alias=True, exclude_none=True, mode="json")


def dumps(obj: Any) -> str:
    """JSON for logs and CLI output: Korean unescaped."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def parse_json(payload: bytes | str | dict[str, Any], *, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    if isinstance(payload, dict):
        return payload
    if len(payload) > limit:
        raise ProtocolError("", f"payload is {len(payload)} bytes, over the {limit}-byte limit")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("", f"payload is not UTF-8 JSON ({exc})") from exc
    except RecursionError:  # "[[[[...]]]]" a few kB deep
        raise ProtocolError("", "payload is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("", f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


def decode(model: type[M], payload: bytes | str | dict[str, Any], *, limit: int = MAX_MESSAGE_BYTES) -> M:
    """Parse and validate one message. Raises ProtocolError naming the first bad field."""
    obj = parse_json(payload, limit=limit)
    version = obj.get("v")
    if version != VERSION:
        raise ProtocolError("v", f"unknown protocol version {version!r} (this build speaks {VERSION})")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or ""
        raise ProtocolError(field, err["msg"]) from exc


# --------------------------------------------------------------------------------------------------------------------
# Audio in parts
# --------------------------------------------------------------------------------------------------------------------


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
