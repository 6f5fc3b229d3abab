"""The voicebot MQTT protocol, version 1: topics, message models, limits.

This is the one module that spells topic strings and message shapes. Every other part (device components, Lambdas,
local rules engine, monitor, benchmark) builds topics and encodes/decodes messages through it.

All JSON is UTF-8 with Korean left unescaped. Every message carries ``v`` (protocol version) and ``ts`` (epoch ms).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from voicebot.request_ids import (  # re-exported: ids are part of the protocol
    CLOCK_SKEW_MS,
    first_id_after,
    horizon_id,
    is_newer,
    new_request_id,
    now_ms,
    request_id_time,
)

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



# --------------------------------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------------------------------

Kind = Literal["transcript", "answer", "audio", "event", "command"]
LocalKind = Literal["player", "control", "reference"]
CLOUD_KINDS: tuple[Kind, ...] = ("transcript", "answer", "audio", "event", "command")
LOCAL_KINDS: tuple[LocalKind, ...] = ("player", "control", "reference")


#: AWS IoT thing names: 1-128 letters, digits, ':', '_' and '-' (no "/" topic levels, no "*" or "?" policy
#: wildcards, no spaces). Every command's --thing and the device policy check it here.
THING_NAME = re.compile(r"^[A-Za-z0-9:_-]{1,128}$")
THING_NAME_RULE = "1 to 128 letters, digits, ':', '_' or '-' (an AWS IoT thing name)"


def check_thing_name(value: str) -> str:
    if not THING_NAME.match(value):
        raise ProtocolError("thing", f"{value!r} is not allowed: {THING_NAME_RULE}")
    return value


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

    @property
    def reference(self) -> str:
        """Device-local: what the player plays, for the interpreter's echo canceller."""
        return f"{self.root}/local/{self.thing}/reference"


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
    replaces: RequestId | None = None
    """``completed`` only: an earlier request of this device that this one takes the place of (an early transcript
    the person went on from). Its answer was never heard, so it leaves the conversation history."""


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
    "started", "stopped", "volume", "apology", "barge_in",
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
    far_end: bool = False
    """The player sends what it plays on ``R/local/T/reference`` (echo cancellation), each sentence before it
    plays: until its first chunk arrives, nothing of this answer can be in the microphone."""


#: One reference chunk at most (16 kHz int16, base64): 0.5 s.
MAX_REFERENCE_CHARS = 22_000


class ReferenceMessage(Message):
    """``R/local/T/reference``, player -> interpreter on the device: 16 kHz mono int16 samples (base64) that the
    speaker plays from ``start`` on (the device's monotonic clock, in seconds, shared by both processes): the far end
    the echo canceller takes out of the microphone signal."""

    start: float
    pcm: str = Field(max_length=MAX_REFERENCE_CHARS)


class ControlMessage(Message):
    """``R/local/T/control``, interpreter -> player on the device: ``cancel`` (the stop word, or an early answer the
    person went on from); ``expect`` (a completed transcript went out: an answer should follow, ``offline`` when the
    interpreter knows the device is not connected); ``apologise`` (the question could not be taken: say so); ``hold``
    (its transcript went out before the end of the turn was confirmed: play nothing of the answer yet) and
    ``release`` (the turn is over: play it)."""

    action: Literal["cancel", "expect", "apologise", "hold", "release"]
    request_id: str | None = None
    offline: bool | None = None


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


# Audio in parts lives in voicebot.audio_parts; re-exported here, where every message shape is named.
from voicebot.audio_parts import AudioAssembler, SentenceAudio, split_audio  # noqa: E402

__all__ = ["CLOCK_SKEW_MS", "AudioAssembler", "SentenceAudio", "first_id_after", "horizon_id", "is_newer",
           "new_request_id", "now_ms", "request_id_time", "split_audio"]
