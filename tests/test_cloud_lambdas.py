"""The chat and speech Lambdas as deployed: moto for DynamoDB and iot-data, an injected LangChain model for
Bedrock, botocore's Stubber for Polly. Events are built by the template's own rule SQL."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import soundfile as sf
from botocore.response import StreamingBody
from botocore.stub import Stubber
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iotdata.models import iotdata_backends

from voicebot.cloud.chat import APOLOGY, TOO_LONG
from voicebot.cloud.llm import LlmSettings, bedrock_model
from voicebot.local.cloud import default_template
from voicebot.local.rules import load_rules, load_template
from voicebot.protocol import AudioAssembler, AudioMessage, decode, new_request_id

REGION = "ap-northeast-2"
ROOT = Path(__file__).resolve().parents[1]
ANSWER = "서울은 지금 맑아요. 기온은 25.5도예요. 저녁에는 비가 올 수 있어요. 우산을 챙기세요."


@dataclass
class FakeContext:
    """The Lambda runtime's context object (what Powertools reads from it)."""

    function_name: str = "voicebot-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{DEFAULT_ACCOUNT_ID}:function:voicebot-test"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class ProbeModel(BaseChatModel):
    """Streams a fixed answer token by token; before each token it notes how many answers were already published."""

    answer: str = ANSWER
    fail_after: int | None = None
    probe: Callable[[], int] = lambda: 0
    seen: list[int] = []
    prompts: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "probe"

    def _stream(self, messages, stop=None, run_manager=None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        self.prompts.append(list(messages))
        for i, token in enumerate(re.findall(r"\S+\s*", self.answer)):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("ThrottlingException: too many requests")
            self.seen.append(self.probe())
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        raise AssertionError("the chat handler must stream, not generate")


def published() -> list[tuple[str, dict]]:
    backend = iotdata_backends[DEFAULT_ACCOUNT_ID][REGION]
    return [(t, json.loads(p)) for t, p in backend.published_payloads]


def create_tables_from_template() -> None:
    resources = load_template(default_template())["Resources"]
    ddb = boto3.client("dynamodb", region_name=REGION)
    for logical, name in (("HistoryTable", "history"), ("IdempotencyTable", "idempotency")):
        props = resources[logical]["Properties"]
        ddb.create_table(TableName=name, AttributeDefinitions=props["AttributeDefinitions"],
                         KeySchema=props["KeySchema"], BillingMode=props["BillingMode"])


def load_lambda(name: str):
    path = ROOT / "cloud" / "lambdas" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"lambda_{name}_{new_request_id()}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def aws(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION, "HISTORY_TABLE": "history", "IDEMPOTENCY_TABLE": "idempotency", "TOPIC_ROOT": "voicebot",
        "HISTORY_TURNS": "2", "HISTORY_DAYS": "7", "MAX_QUESTION_CHARS": "2000", "POWERTOOLS_METRICS_NAMESPACE": "voicebot",
        "POWERTOOLS_SERVICE_NAME": "test", "VOICE_ID": "Seoyeon", "SPEECH_RATE": "120%", "AUDIO_FORMAT": "ogg_vorbis",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        create_tables_from_template()
        yield


def rule_event(rule: str, topic: str, payload: dict) -> dict:
    """The event the template's rule delivers for this publish (its SELECT's JSON), or None if it does not fire."""
    query = {r.name: r.query for r in load_rules(default_template(), topic_root="voicebot")}[rule]
    assert query.matches(topic, payload)
    return query.select(topic, payload)


def transcript(text: str, request_id: str | None = None, **extra) -> dict:
    return {"v": 1, "ts": 1, "requestId": request_id or new_request_id(), "state": "completed", "text": text, **extra}


@pytest.fixture
def chat(aws):
    app = load_lambda("chat")
    app.deps.model = ProbeModel(probe=lambda: sum(1 for t, _ in published() if t.endswith("/answer")), seen=[],
                                prompts=[])
    return app


def answers_for(request_id: str) -> list[tuple[str, dict]]:
    return [(t, m) for t, m in published() if t.endswith("/answer") and m["requestId"] == request_id]


def test_sentences_are_published_while_the_model_is_still_streaming(chat):
    event = rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("서울 날씨 어때?"))
    result = chat.handler(event, FakeContext())
    assert result["answered"] and result["sentences"] == 4
    sent = [m for _, m in answers_for(event["requestId"])]
    assert [m["text"] for m in sent if m["text"]] == [
        "서울은 지금 맑아요.", "기온은 25.5도예요.", "저녁에는 비가 올 수 있어요.", "우산을 챙기세요."]
    # seq 0..n; only the final message is `last` (an empty closing one when the last sentence went out early)
    assert [m["seq"] for m in sent] == list(range(len(sent))) and len(sent) in (4, 5)
    assert [m["last"] for m in sent] == [False] * (len(sent) - 1) + [True]
    # Before the model's last token, three sentences were already out: streaming, not whole-answer.
    assert chat.deps.model.seen[-1] == 3 and chat.deps.model.seen[0] == 0


def test_history_round_trips_is_bounded_and_expires(chat):
    questions = ["첫 번째 질문", "두 번째 질문", "세 번째 질문", "네 번째 질문"]
    for q in questions:
        chat.handler(rule_event("ChatRule", "voicebot/pi-1/transcript", transcript(q)), FakeContext())
    last_prompt = chat.deps.model.prompts[-1]
    humans = [m.content for m in last_prompt if isinstance(m, HumanMessage)]
    assert humans == ["두 번째 질문", "세 번째 질문", "네 번째 질문"]  # HISTORY_TURNS=2, then the question
    assert AIMessage(ANSWER) in last_prompt
    items = boto3.resource("dynamodb", region_name=REGION).Table("history").scan()["Items"]
    latest = [i for i in items if i["turn"] == "#latest"]
    items = [i for i in items if i["turn"] != "#latest"]
    assert len(items) == 4 and all(i["thing"] == "pi-1" for i in items)
    assert latest[0]["request_id"] == max(i["request_id"] for i in items)  # the newest question of the device
    for item in items:
        assert int(item["expires_at"]) - int(item["ts"]) // 1000 == 7 * 86_400
        assert item["turn"].endswith(item["request_id"])


def test_a_duplicate_delivery_does_not_answer_twice(chat):
    event = rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("한 번만 대답해 줘"))
    first = chat.handler(event, FakeContext())
    second = chat.handler(dict(event), FakeContext(aws_request_id="req-2"))
    assert first == second
    assert len([m for _, m in answers_for(event["requestId"]) if m["text"]]) == 4
    assert len(chat.deps.model.prompts) == 1


def test_a_payload_claiming_another_thing_is_answered_on_the_topics_thing(chat):
    payload = transcript("다른 기기인 척", thing="victim-device", userId="someone")
    event = rule_event("ChatRule", "voicebot/attacker/transcript", payload)
    assert event["thing"] == "attacker"
    chat.handler(event, FakeContext())
    topics = {t for t, _ in answers_for(payload["requestId"])}
    assert topics == {"voicebot/attacker/answer"}
    items = boto3.resource("dynamodb", region_name=REGION).Table("history").scan()["Items"]
    assert {i["thing"] for i in items} == {"attacker"}  # turns and the latest-request marker alike


@pytest.mark.parametrize("fail_after", [0, 6])
def test_a_failing_model_yields_the_apology_and_an_error_event(chat, fail_after):
    chat.deps.model.fail_after = fail_after
    event = rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("실패해 볼까?"))
    result = chat.handler(event, FakeContext())
    assert "ThrottlingException" in result["error"]
    sent = [m for _, m in answers_for(event["requestId"])]
    assert sent[-1]["text"] == APOLOGY and sent[-1]["last"] is True
    assert [m["seq"] for m in sent] == list(range(len(sent)))
    assert all(not m["last"] for m in sent[:-1])
    errors = [m for t, m in published() if t == "voicebot/pi-1/event" and m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["requestId"] == event["requestId"] and "model failed" in errors[0]["detail"]
    items = boto3.resource("dynamodb", region_name=REGION).Table("history").scan()["Items"]
    assert [i["turn"] for i in items] == ["#latest"]  # no turn stored for a failed answer


def test_a_question_that_arrives_after_a_newer_one_is_not_answered(chat):
    older, newer = new_request_id(), new_request_id()
    chat.handler(rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("나중 질문", newer)), FakeContext())
    result = chat.handler(rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("먼저 질문", older)),
                          FakeContext())
    assert result == {"answered": True, "sentences": 0, "error": "superseded"}
    assert answers_for(older) == [] and len(chat.deps.model.prompts) == 1


def test_a_newer_question_mid_answer_stops_the_older_one(chat):
    first = new_request_id()
    history = chat.deps.history
    probe = chat.deps.model.probe

    def newer_question_arrives() -> int:  # while the first answer streams, the person asks again
        if len(chat.deps.model.seen) == 4:  # after the first sentence went out
            history.take_request("pi-1", new_request_id())
        return probe()

    chat.deps.model.probe = newer_question_arrives
    result = chat.handler(rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("길게 말해 줘", first)),
                          FakeContext())
    assert result["error"] == "superseded"
    sent = [m for _, m in answers_for(first)]
    assert 1 <= len(sent) < 4 and not any(m["last"] for m in sent)


def test_a_10000_character_question_is_refused_with_an_error_event(chat):
    event = rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("가" * 10_000))
    chat.handler(event, FakeContext())
    errors = [m for t, m in published() if t.endswith("/event") and m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["requestId"] == event["requestId"]
    assert [m["text"] for _, m in answers_for(event["requestId"])] == [TOO_LONG]
    assert chat.deps.model.prompts == []


def test_the_production_model_is_bedrock_converse_streaming_with_the_settings():
    settings = LlmSettings(model_id="global.anthropic.claude-haiku-4-5-20251001-v1:0", region="ap-northeast-2",
                           temperature=0.2, max_tokens=256)
    model = bedrock_model(settings, client=boto3.client("bedrock-runtime", region_name="ap-northeast-2",
                                                        aws_access_key_id="x", aws_secret_access_key="y"))
    assert type(model).__name__ == "ChatBedrockConverse"
    assert model.model_id == settings.model_id and model.region_name == "ap-northeast-2"
    assert model.temperature == 0.2 and model.max_tokens == 256
    assert model.disable_streaming is False
    assert model.config.retries["mode"] == "adaptive"


# --------------------------------------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------------------------------------


def ogg_bytes(seconds: float, rate: int = 24_000) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    sf.write(buf, rng.uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32), rate, format="OGG",
             subtype="VORBIS")
    return buf.getvalue()


@pytest.fixture
def speech(aws):
    app = load_lambda("speech")
    polly = boto3.client("polly", region_name=REGION)
    app.deps.tts.client = polly
    with Stubber(polly) as stubber:
        yield app, stubber


def expect_polly(stubber: Stubber, ssml: str, audio: bytes) -> None:
    stubber.add_response(
        "synthesize_speech",
        {"AudioStream": StreamingBody(io.BytesIO(audio), len(audio)), "ContentType": "audio/ogg",
         "RequestCharacters": len(ssml)},
        {"Engine": "neural", "LanguageCode": "ko-KR", "VoiceId": "Seoyeon", "OutputFormat": "ogg_vorbis",
         "SampleRate": "24000", "TextType": "ssml", "Text": ssml},
    )


def reassembled(thing: str) -> dict[int, bytes]:
    assembler = AudioAssembler()
    out = {}
    for topic, message in published():
        if topic == f"voicebot/{thing}/audio":
            done = assembler.add(decode(AudioMessage, message))
            if done:
                out[done.seq] = done.data
    return out


def test_ssml_special_characters_are_escaped_and_synthesize(speech):
    app, stubber = speech
    audio = ogg_bytes(0.5)
    text = 'A <B> & "C" \'D\' 라고요?'
    expect_polly(stubber, '<speak><prosody rate="120%">A &lt;B&gt; &amp; &quot;C&quot; &apos;D&apos; 라고요?'
                          "</prosody></speak>", audio)
    answer = {"v": 1, "ts": 1, "requestId": new_request_id(), "seq": 2, "text": text, "last": True}
    result = app.handler(rule_event("SpeechRule", "voicebot/pi-1/answer", answer), FakeContext())
    stubber.assert_no_pending_responses()
    assert result["published"] == 1
    assert reassembled("pi-1") == {2: audio}
    message = [m for t, m in published() if t.endswith("/audio")][0]
    assert message["format"] == "ogg_vorbis" and message["sampleRate"] == 24000 and message["last"] is True


def test_a_long_sentence_is_split_into_parts_that_reassemble_bit_exactly(speech):
    app, stubber = speech
    audio = ogg_bytes(40.0)
    assert len(audio) > 200_000  # two or more parts under the 100 kB limit
    text = "아주 긴 문장입니다 " * 20
    expect_polly(stubber, f'<speak><prosody rate="120%">{text}</prosody></speak>', audio)
    answer = {"v": 1, "ts": 1, "requestId": new_request_id(), "seq": 0, "text": text, "last": False}
    result = app.handler(rule_event("SpeechRule", "voicebot/pi-1/answer", answer), FakeContext())
    assert result["published"] >= 3
    sizes = [len(p) for t, p in iotdata_backends[DEFAULT_ACCOUNT_ID][REGION].published_payloads]
    assert max(sizes) <= 100_000
    assert reassembled("pi-1") == {0: audio}


def test_a_sentence_polly_refuses_becomes_an_error_event_with_its_seq(speech):
    app, stubber = speech
    stubber.add_client_error("synthesize_speech", service_error_code="TextLengthExceededException",
                             service_message="too long", http_status_code=400)
    answer = {"v": 1, "ts": 1, "requestId": new_request_id(), "seq": 3, "text": "말할 수 없는 문장", "last": True}
    assert app.handler(rule_event("SpeechRule", "voicebot/pi-1/answer", answer), FakeContext()) == {"published": 0}
    events = [m for t, m in published() if t == "voicebot/pi-1/event"]
    assert len(events) == 1
    assert events[0]["type"] == "error" and events[0]["seq"] == 3 and events[0]["last"] is True
    assert "TextLengthExceeded" in events[0]["detail"]


def test_the_closing_empty_answer_sends_an_empty_last_audio(speech):
    app, _ = speech
    answer = {"v": 1, "ts": 1, "requestId": new_request_id(), "seq": 4, "text": "", "last": True}
    assert app.handler(rule_event("SpeechRule", "voicebot/pi-1/answer", answer), FakeContext()) == {"published": 1}
    message = [m for t, m in published() if t.endswith("/audio")][0]
    assert message["last"] is True and message["audio"] == "" and message["seq"] == 4


def test_missing_configuration_fails_at_import(monkeypatch):
    monkeypatch.delenv("IDEMPOTENCY_TABLE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with pytest.raises(RuntimeError, match="IDEMPOTENCY_TABLE"):
        load_lambda("chat")


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('not in this Lambda: ' + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(("name", "blocked"), [
    ("speech", {"langchain_core", "langchain_aws", "numpy", "soundfile", "awscrt", "awsiot", "yaml"}),
    ("chat", {"numpy", "soundfile", "awscrt", "awsiot"}),
])
@pytest.mark.slow  # a real process or real timeouts
def test_each_lambda_imports_with_only_its_own_requirements(name, blocked, tmp_path):
    """What `make build-<Name>Function` packs (requirements.txt + voicebot) is enough to import the handler."""
    requirements = (ROOT / "cloud" / "lambdas" / name / "requirements.txt").read_text()
    if name == "speech":
        assert "langchain" not in requirements
    code = BLOCKER.format(blocked=blocked) + (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(ROOT / 'cloud' / 'lambdas' / name / 'app.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.handler.__name__)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": REGION, "HISTORY_TABLE": "h", "IDEMPOTENCY_TABLE": "i",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "handler"


def test_polly_throttling_is_retried_by_botocore_adaptive_retries(aws):
    app = load_lambda("speech")
    config = app.deps.tts.client.meta.config
    # botocore retries ThrottlingException itself, with client-side rate limiting
    assert config.retries["mode"] == "adaptive" and config.retries["total_max_attempts"] == 4
    assert app.deps.tts.voice_id == "Seoyeon" and app.deps.tts.engine == "neural" and app.deps.tts.rate == "120%"
