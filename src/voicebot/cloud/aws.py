"""Production wiring of the cloud handlers from the Lambda environment: boto3 clients, DynamoDB history, Bedrock.

Missing configuration fails at import of the Lambda module (cold start), not as an empty string at run time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from voicebot.cloud.history import DynamoHistory
from voicebot.cloud.publish import IotDataPublisher
from voicebot.cloud.speech import SpeechDeps, SpeechSettings
from voicebot.cloud.tts import PollyTts, polly_client
from voicebot.protocol import DEFAULT_TOPIC_ROOT, MAX_TRANSCRIPT_CHARS

if TYPE_CHECKING:  # the speech Lambda does not ship LangChain
    from voicebot.cloud.chat import ChatDeps, ChatSettings


class ConfigError(RuntimeError):
    pass


def require_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"environment variable {name} is not set (see cloud/template.yaml)")
    return value


def iot_data_client(region: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("IOT_DATA_ENDPOINT", "").strip()
    url = f"https://{endpoint}" if endpoint and not endpoint.startswith("https://") else (endpoint or None)
    # A publish is a small HTTPS POST: short timeouts keep the apology inside the chat's reserve (ChatSettings.reserve_s)
    # even when IoT Core is slow: at most 2 attempts x (1 s connect + 1.5 s read) per message.
    config = Config(connect_timeout=1, read_timeout=1.5, retries={"mode": "standard", "total_max_attempts": 2})
    return boto3.client("iot-data", region_name=region, endpoint_url=url, config=config)


def dynamodb_config() -> Any:
    """DynamoDB answers in milliseconds; a table that is throttled, stalled or failing must cost the chat seconds,
    not the Lambda's whole timeout (botocore's defaults: 60 s read timeout, retried). At most 2 attempts of 1 s
    connect + 1 s read plus the retry's backoff: ``ChatSettings.store_call_s`` (4 s) is this bound."""
    from botocore.config import Config

    return Config(connect_timeout=1, read_timeout=1, retries={"mode": "standard", "total_max_attempts": 2})


def chat_settings_from_env() -> ChatSettings:
    from voicebot.cloud.chat import ChatSettings

    return ChatSettings(
        topic_root=os.environ.get("TOPIC_ROOT", DEFAULT_TOPIC_ROOT),
        history_turns=int(os.environ.get("HISTORY_TURNS", ChatSettings.history_turns)),
        max_question_chars=int(os.environ.get("MAX_QUESTION_CHARS", str(MAX_TRANSCRIPT_CHARS))),
        first_clause_chars=int(os.environ.get("FIRST_CLAUSE_CHARS", ChatSettings.first_clause_chars)),
    )


def chat_deps_from_env(*, model: Any = None) -> ChatDeps:
    import boto3

    from voicebot.cloud.chat import ChatDeps
    from voicebot.cloud.llm import BedrockModels, LlmSettings

    table = boto3.resource("dynamodb", config=dynamodb_config()).Table(require_env("HISTORY_TABLE"))
    return ChatDeps(
        model=model,
        model_for_budget=BedrockModels(LlmSettings.from_env()),  # client timeouts follow the invocation's time left
        history=DynamoHistory(table, keep_days=int(os.environ.get("HISTORY_DAYS", "7"))),
        publisher=IotDataPublisher(iot_data_client()),
        settings=chat_settings_from_env(),
    )


def speech_deps_from_env(*, polly: Any = None) -> SpeechDeps:
    tts = PollyTts(
        polly or polly_client(),
        voice_id=os.environ.get("VOICE_ID", "Seoyeon"),
        rate=os.environ.get("SPEECH_RATE", "120%"),
        output_format=os.environ.get("AUDIO_FORMAT", "ogg_vorbis"),
    )
    return SpeechDeps(tts=tts, publisher=IotDataPublisher(iot_data_client()),
                      settings=SpeechSettings(topic_root=os.environ.get("TOPIC_ROOT", DEFAULT_TOPIC_ROOT)))
