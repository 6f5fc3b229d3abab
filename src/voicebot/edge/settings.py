"""The device components' settings: one typed model per component, named as in its recipe's configuration.

Both front doors build from these models (the Greengrass entry from the component configuration, the CLI from its
flags, whose defaults are read from here), so a default exists once and cannot drift, and a test holds the recipes'
``DefaultConfiguration`` to the same values. Bounds are part of the model: ``Volume`` 0-1, ``HangoverMs`` 100-5000...

A live configuration update is applied key by key: a bad value (``Volume: "loud"``, ``Volume: true``) or an unknown
key is logged once and reported (the components publish it as an ``error`` event); that one setting keeps its last
good value and the others still change. Types are strict where it matters: a boolean is never a number. Numbers may
arrive as strings, as Greengrass stores them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

log = logging.getLogger(__name__)

S = TypeVar("S", bound="ComponentSettings")

#: Keys of a component's configuration that are not settings of the process (Greengrass reads them itself).
NOT_SETTINGS = frozenset({"accessControl"})


class ComponentSettings(BaseModel):
    # The validator is built on first use: a component that never receives a live update never pays for it.
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True, validate_default=True,
                              defer_build=True)

    @classmethod
    def defaults(cls) -> Any:
        """The defaults as attributes, without building the model (``PlayerConfig.defaults().volume``)."""
        from types import SimpleNamespace

        return SimpleNamespace(**{name: field.default for name, field in cls.model_fields.items()})

    @classmethod
    def recipe_defaults(cls) -> dict[str, str]:
        """The defaults as a recipe writes them: by configuration key, numbers as strings (Greengrass stores numbers
        as strings when they are written so)."""
        return {field.alias or name: str(field.default) for name, field in cls.model_fields.items()}

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic's lax mode takes ``true`` as 1.0: a volume of ``true`` is a mistake, not full volume."""
        if isinstance(value, bool) and cls.model_fields[info.field_name or ""].annotation is not bool:
            raise ValueError("a boolean is not allowed here")
        return value

    def merged(self: S, config: Mapping[str, Any], problems: list[str] | None = None) -> S:
        """These settings with every valid value of ``config`` applied (keys as in the recipe). Each rejected value
        and each unknown key is logged once and, when ``problems`` is given, described there (one line each)."""
        current = self.model_dump(by_alias=True)
        known = {field.alias or name for name, field in type(self).model_fields.items()}
        for key in config:
            if key not in known and key not in NOT_SETTINGS:
                line = f"unknown setting {str(key)[:60]!r} ignored (known: {', '.join(sorted(known))})"
                log.warning("configuration: %s", line)
                if problems is not None:
                    problems.append(line)
        for name, field in type(self).model_fields.items():
            key = field.alias or name
            if key not in config:
                continue
            try:
                current = type(self).model_validate({**current, key: config[key]}).model_dump(by_alias=True)
            except ValidationError as exc:
                line = (f"setting {key}={str(config[key])[:80]!r} rejected ({exc.errors()[0]['msg']}); "
                        f"keeping {current[key]!r}")
                log.warning("configuration: %s", line)
                if problems is not None:
                    problems.append(line)
        return type(self).model_validate(current)


class PlayerConfig(ComponentSettings):
    """com.voicebot.VoicePlayer."""

    topic_root: str = Field("voicebot", alias="TopicRoot", pattern=r"^[A-Za-z0-9_-]+$")
    sink: str = Field("device", alias="Sink", min_length=1)
    """device[:NAME] | wav:PATH | null (restart-needing)."""
    volume: float = Field(1.0, alias="Volume", ge=0.0, le=1.0)
    """1.0 plays the audio as it was synthesized; the loudness of the speaker is the ALSA mixer's job."""
    gap_timeout_s: float = Field(3.0, alias="GapTimeoutS", ge=0.1, le=60.0)
    """How long to wait for a missing sentence before skipping it."""
    local_apology: bool = Field(True, alias="LocalApology")
    """Say a built-in Korean clip when the cloud cannot answer (no answer, an error and no apology audio)."""


class InterpreterConfig(ComponentSettings):
    """com.voicebot.VoiceInterpreter."""

    topic_root: str = Field("voicebot", alias="TopicRoot", pattern=r"^[A-Za-z0-9_-]+$")
    source: str = Field("mic", alias="Source", min_length=1)
    stt: Literal["transcribe", "vosk"] = Field("transcribe", alias="SttBackend")
    region: str = Field("ap-northeast-2", alias="Region", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    vad_engine: Literal["webrtc", "silero"] = Field("webrtc", alias="VadEngine")
    """silero needs the optional extra, which has no wheel for the Pi: laptops only (not in the recipe)."""
    vad_aggressiveness: int = Field(2, alias="VadAggressiveness", ge=0, le=3)
    preroll_ms: int = Field(300, alias="PrerollMs", ge=0, le=2000)
    hangover_ms: int = Field(700, alias="HangoverMs", ge=100, le=5000)
    max_utterance_s: float = Field(15.0, alias="MaxUtteranceS", ge=1.0, le=120.0)
    end_of_turn: Literal["hangover", "text", "audio", "both"] = Field("both", alias="EndOfTurn")
    """What may end a turn before HangoverMs (edge/turn.py): hangover (never early), text (the Korean text cue),
    audio (the Smart Turn v3 model on the last seconds of audio), both (text where the recognizer has shown the
    words, the model where it lags)."""
    turn_model_ms: int = Field(120, alias="TurnModelMs", ge=60, le=2000)
    """audio, both: silence after which the audio turn model is asked."""
    early_end_ms: int = Field(250, alias="EarlyEndMs", ge=0, le=2000)
    """Silence that ends a turn whose words sound finished ("...어때요"), sending its transcript at once; 0: off
    (always HangoverMs)."""
    preempt_ms: int = Field(60, alias="PreemptMs", ge=0, le=2000)
    """With an early end: silence after finished-sounding words at which the transcript already goes out, so the
    answer is being written while the turn's end is confirmed (speech before then withdraws it); 0: at the early
    end."""
    quiet_margin_db: float = Field(10.0, alias="QuietMarginDb", ge=0.0, le=40.0)
    """For PreemptMs: frames within this many dB of the room's noise floor count as silence even while webrtcvad,
    which smooths its verdict over ~90 ms, still calls them speech; 0: webrtcvad alone."""
    echo_tail_s: float = Field(0.4, alias="EchoTailS", ge=0.0, le=5.0)
    stop_word: str = Field("", alias="StopWord", max_length=20)
    """Empty: no stop word. Heard while the device speaks, it cancels the answer."""
    barge_in: bool = Field(True, alias="BargeIn")
    """Full duplex: the player's output is taken out of the microphone signal (WebRTC AEC3), so a person can talk over
    the device and stop it by speaking; off (or no far end from the player): the microphone is muted while it
    speaks."""
    barge_in_min_ms: int = Field(150, alias="BargeInMinMs", ge=60, le=2000)
    """The person's voice needed, over the device's, before the answer stops."""
    barge_in_echo_margin_db: float = Field(12.0, alias="BargeInEchoMarginDb", ge=1.0, le=40.0)
    """A frame is the person's when echo cancellation took off less than this (it takes 20-40 dB off the device's
    own voice)."""
    barge_in_min_level_dbfs: float = Field(-40.0, alias="BargeInMinLevelDbfs", ge=-70.0, le=0.0)
    """...and it is at least this loud after cancellation (the room's reverberation of the device's words stays
    below; a person speaking to the device is above)."""
