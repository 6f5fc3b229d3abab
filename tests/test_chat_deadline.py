"""The chat Lambda against a Bedrock endpoint that accepts the connection and never answers: the real botocore
client of ChatBedrockConverse talks to a local socket that stays silent. The apology and the error event must go out
before the Lambda's own deadline, whatever the client's retries would do."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from moto import mock_aws

from tests.test_cloud_lambdas import (
    REGION,
    create_tables_from_template,
    load_lambda,
    published,
    rule_event,
    transcript,
)
from voicebot.cloud.chat import APOLOGY, ChatSettings, answer_budget
from voicebot.cloud.llm import MAX_READ_WAIT_S, BedrockModels, LlmSettings


class SilentEndpoint:
    """A TCP server that accepts every connection and never sends a byte (a hung Bedrock endpoint)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.server.close()
        for conn in self.connections:
            conn.close()


@dataclass
class CountdownContext:
    """The Lambda context, with get_remaining_time_in_millis counting down on the real clock."""

    seconds: float
    function_name: str = "voicebot-chat"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:voicebot-chat"
    aws_request_id: str = "req-deadline"
    ends: float = field(init=False)

    def __post_init__(self) -> None:
        self.ends = time.monotonic() + self.seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.ends - time.monotonic()) * 1000)


@pytest.fixture
def silent_bedrock(monkeypatch) -> Iterator[SilentEndpoint]:
    endpoint = SilentEndpoint()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION, "HISTORY_TABLE": "history", "IDEMPOTENCY_TABLE": "idempotency", "TOPIC_ROOT": "voicebot",
        "POWERTOOLS_METRICS_NAMESPACE": "voicebot", "POWERTOOLS_SERVICE_NAME": "chat", "VOICEBOT_LLM": "bedrock",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": endpoint.url,  # botocore's per-service endpoint setting
    }.items():
        monkeypatch.setenv(key, value)
    # moto answers DynamoDB and iot-data; the Bedrock calls pass through to the silent socket
    with mock_aws(config={"core": {"passthrough": {"urls": [rf"{endpoint.url}/.*"]}}}):
        create_tables_from_template()
        yield endpoint
    endpoint.close()


@pytest.mark.slow  # a real process or real timeouts
def test_a_model_that_never_answers_gets_the_apology_out_before_the_lambda_ends(silent_bedrock):
    app = load_lambda("chat")
    context = CountdownContext(seconds=9.0)  # what the runtime reports at the start of this invocation
    event = rule_event("ChatRule", "voicebot/pi-1/transcript", transcript("거기 누구 있어요?"))
    result = app.handler(event, context)
    left_ms = context.get_remaining_time_in_millis()

    assert silent_bedrock.accepted.is_set()  # the request really went to the (silent) endpoint
    assert result["answered"] and "did not answer in time" in result["error"]
    assert left_ms > 0, "the handler returned after the Lambda's deadline"
    sent = [(t, m) for t, m in published() if m.get("requestId") == event["requestId"]]
    answers = [m for t, m in sent if t == "voicebot/pi-1/answer"]
    errors = [m for t, m in sent if t == "voicebot/pi-1/event" and m["type"] == "error"]
    assert [a["text"] for a in answers] == [APOLOGY] and answers[0]["last"] is True
    assert len(errors) == 1 and "model failed" in errors[0]["detail"]


def test_the_budget_follows_the_time_left():
    settings = ChatSettings(deadline_s=25.0, reserve_s=6.0)
    assert answer_budget(settings, None) == 25.0
    assert answer_budget(settings, lambda: 35.0) == 25.0
    assert answer_budget(settings, lambda: 9.0) == 3.0
    assert answer_budget(settings, lambda: 4.0) == 0.0  # too late to ask the model: apologise at once


def test_bedrock_client_timeouts_and_attempts_fit_the_budget(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    models = BedrockModels(LlmSettings(region=REGION), keep=2)
    model = models(7.9)
    config = model.client.meta.config
    assert config.read_timeout == MAX_READ_WAIT_S and config.connect_timeout <= 3  # both within the budget
    assert models(2.5).client.meta.config.read_timeout == 2
    # total_max_attempts counts the first try; botocore's max_attempts would have meant one more
    assert config.retries["total_max_attempts"] == 2
    assert models(7.2) is model  # one client per whole second of budget
    models(12)
    assert len(models) == 2  # bounded


def test_a_model_that_stalls_mid_answer_is_cut_at_the_deadline_with_an_apology(tmp_path, connect):
    from tests.test_chat_once import Collect, event
    from voicebot.cloud.chat import ChatDeps, answer_transcript
    from voicebot.cloud.history import SqliteHistory
    from voicebot.cloud.llm import LoopbackChatModel

    slow = LoopbackChatModel(answer="첫 문장이에요. 둘째 문장은 아주 천천히 나와요.", tokens_per_s=2.0)  # 0.5 s a word
    publisher = Collect(connect("cloud"))
    deps = ChatDeps(model=slow, history=SqliteHistory(tmp_path / "h.sqlite"), publisher=publisher,
                    settings=ChatSettings(deadline_s=1.2))
    outcome = answer_transcript(event("pi-1", "천천히 말해 봐"), deps)
    assert outcome is not None and "did not finish in time" in outcome.error
    answers = publisher.answers(outcome.request_id)
    assert [a["text"] for a in answers][-1] == APOLOGY and answers[-1]["last"] is True
