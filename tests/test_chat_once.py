"""Chat under at-least-once delivery and concurrency: one answer per request, the newest request wins, a request id
from a broken clock cannot silence a device, and a publisher outage does not swallow the apology. The rules live in
the chat logic and the history stores, so the local stack and the Lambda behave the same."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from moto import mock_aws

from tests.conftest import Recorder
from voicebot.cloud.chat import APOLOGY, ChatDeps, ChatSettings, answer_transcript
from voicebot.cloud.history import DynamoHistory, SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.publish import IotDataPublisher, TransportPublisher
from voicebot.cloud.tts import EspeakTts
from voicebot.local.cloud import LocalCloud, default_template
from voicebot.local.rules import load_template
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    AnswerMessage,
    TranscriptMessage,
    decode,
    encode,
    first_id_after,
    new_request_id,
    now_ms,
)

REGION = "ap-northeast-2"


def event(thing: str, text: str, request_id: str | None = None) -> dict[str, Any]:
    """What the ChatRule delivers: the transcript's JSON plus topic(2)."""
    message = TranscriptMessage(request_id=request_id or new_request_id(), state="completed", text=text)
    return {**json.loads(encode(message)), "thing": thing}


def future_id(minutes: int) -> str:
    """A UUIDv7-shaped request id whose time is ``minutes`` ahead of now (a device with a broken clock)."""
    return first_id_after(now_ms() + minutes * 60_000)[:-1] + "1"


class Collect(TransportPublisher):
    """The local stack's publisher, to the real mosquitto, keeping each message the broker acknowledged (so a test
    reads what went out without racing a subscriber)."""

    def __init__(self, transport) -> None:
        super().__init__(transport)
        self.messages: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        super().publish(topic, payload, qos)  # raises if the broker did not acknowledge it
        with self.lock:
            self.messages.append((topic, json.loads(payload)))

    def answers(self, request_id: str) -> list[dict]:
        return [m for t, m in self.messages if t.endswith("/answer") and m["requestId"] == request_id]


def test_the_local_stack_answers_a_duplicated_transcript_once(broker, connect, topics, tmp_path):
    history = SqliteHistory(tmp_path / "h.sqlite")
    done = threading.Semaphore(0)
    observer = Recorder()
    connect("observer").subscribe(f"{topics.root}/{topics.thing}/#", 1, observer)
    with LocalCloud(broker.url, model=LoopbackChatModel(), history=history, tts=EspeakTts(), topic_root=topics.root,
                    on_invoke=lambda name, *_: done.release() if name == "ChatFunction" else None) as cloud:
        message = TranscriptMessage(request_id=new_request_id(), state="completed", text="한 번만 대답해 주세요")
        device = connect("device")
        for _ in range(2):  # at-least-once: the same transcript arrives twice
            device.publish(topics.transcript, encode(message), QOS_AT_LEAST_ONCE).result(5)
        assert done.acquire(timeout=30) and done.acquire(timeout=30)  # both deliveries were handled
        outcomes = sorted((o.error or "answered") for o in cloud.outcomes if o)
    assert outcomes == ["answered", "duplicate"]
    observer.wait_for(lambda ms: any(t == topics.answer and b'"last":true' in p for t, p in ms), 30)
    answers = [decode(AnswerMessage, p) for p in observer.on(topics.answer)]
    mine = [a for a in answers if a.request_id == message.request_id]
    assert [a.seq for a in mine] == list(range(len(mine))) and sum(a.last for a in mine) == 1
    assert len(history.recent(topics.thing, 10)) == 1


class SlowSqlite(SqliteHistory):
    """SQLite with the latency of a remote store (5 ms per call), so that two handlers really interleave."""

    def _slow(self) -> None:
        time.sleep(0.005)  # injected store latency, not synchronisation

    def latest_request(self, thing: str) -> str | None:
        self._slow()
        return super().latest_request(thing)

    def take_request(self, thing: str, request_id: str):
        self._slow()
        return super().take_request(thing, request_id)

    def recent(self, thing: str, limit: int):
        self._slow()
        return super().recent(thing, limit)


def test_the_newer_of_two_concurrent_questions_always_wins(tmp_path, connect):
    history = SlowSqlite(tmp_path / "h.sqlite")
    model = LoopbackChatModel(answer="첫 번째 문장이에요. 두 번째 문장이에요. 세 번째 문장이에요. 네 번째 문장이에요.")
    cloud = connect("cloud")
    for round_ in range(30):
        publisher = Collect(cloud)
        deps = ChatDeps(model=model, history=history, publisher=publisher)
        older, newer = new_request_id(), new_request_id()
        start = threading.Barrier(2)

        def ask(rid: str, deps: ChatDeps, start: threading.Barrier) -> None:
            start.wait()
            answer_transcript(event("pi-1", f"질문 {rid[-4:]}", rid), deps)

        threads = [threading.Thread(target=ask, args=(rid, deps, start)) for rid in (older, newer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        newest = publisher.answers(newer)
        assert newest and newest[-1]["last"] is True, f"round {round_}: the newer answer was cut off"
        assert len([a for a in newest if a["text"]]) == 4
        assert not any(a["last"] for a in publisher.answers(older)[:-1])
        assert history.latest_request("pi-1") == newer


def test_a_request_id_from_the_future_cannot_silence_the_device(tmp_path, connect):
    path = tmp_path / "h.sqlite"
    publisher = Collect(connect("cloud"))
    deps = ChatDeps(model=LoopbackChatModel(), history=SqliteHistory(path), publisher=publisher)
    answer_transcript(event("pi-1", "미래에서 온 질문", future_id(60)), deps)
    deps.history = SqliteHistory(path)  # across a restart
    later = new_request_id()
    outcome = answer_transcript(event("pi-1", "지금 질문", later), deps)
    assert outcome is not None and outcome.error is None
    assert publisher.answers(later)[-1]["last"] is True


@pytest.fixture
def dynamo_history(monkeypatch) -> Iterator[DynamoHistory]:
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    props = load_template(default_template())["Resources"]["HistoryTable"]["Properties"]
    with mock_aws():
        ddb = boto3.resource("dynamodb", region_name=REGION)
        table = ddb.create_table(TableName="history", AttributeDefinitions=props["AttributeDefinitions"],
                                 KeySchema=props["KeySchema"], BillingMode=props["BillingMode"])
        yield DynamoHistory(table)


@pytest.mark.parametrize("store", ["sqlite", "dynamo"])
def test_take_request_is_one_conditional_write_with_the_same_rules_in_both_stores(store, tmp_path, request):
    history = SqliteHistory(tmp_path / "h.sqlite") if store == "sqlite" else request.getfixturevalue("dynamo_history")
    a, b = new_request_id(), new_request_id()
    assert history.take_request("pi-1", b) == "taken"
    assert history.take_request("pi-1", a) == "older"  # arrived late
    assert history.take_request("pi-1", b) == "duplicate"
    assert history.latest_request("pi-1") == b
    assert history.take_request("pi-1", "typed-in-console") == "taken"  # an id without a time counts as newer
    assert history.take_request("pi-1", "typed-in-console") == "duplicate"
    c = new_request_id()
    assert history.take_request("pi-1", c) == "taken"
    future = future_id(60)
    assert history.take_request("pi-1", future) == "taken"  # not ordered by its time: it counts as newer once
    assert history.take_request("pi-1", new_request_id()) == "taken"  # and the next real one takes over
    assert history.take_request("pi-2", a) == "taken"  # devices are independent


@pytest.mark.parametrize("store", ["sqlite", "dynamo"])
def test_a_replaced_early_question_leaves_the_history(store, tmp_path, request, connect):
    """The person went on after an early transcript: the whole question names the early request it replaces, whose
    answer nobody heard; the model does not see that turn, and the history keeps only the whole question."""
    history = SqliteHistory(tmp_path / "h.sqlite") if store == "sqlite" else request.getfixturevalue("dynamo_history")
    model = LoopbackChatModel(answer="부산은 흐리고 비가 와요.")
    deps = ChatDeps(model=model, history=history, publisher=Collect(connect("cloud")))
    earlier, early, whole = new_request_id(), new_request_id(), new_request_id()
    answer_transcript(event("pi-1", "안녕하세요", earlier), deps)
    answer_transcript(event("pi-1", "오늘 날씨 어때요", early), deps)  # answered in full before the person went on
    assert [t.request_id for t in history.recent("pi-1", 10)] == [earlier, early]

    replacing = {**event("pi-1", "오늘 날씨 어때요 서울 말고 부산", whole), "replaces": early}
    assert decode(TranscriptMessage, json.dumps(replacing).encode()).replaces == early  # a protocol field
    answer_transcript(replacing, deps)
    assert [(t.request_id, t.question) for t in history.recent("pi-1", 10)] == [
        (earlier, "안녕하세요"), (whole, "오늘 날씨 어때요 서울 말고 부산")]
    assert history.forget("pi-1", early) is False  # gone already; forgetting twice is harmless


class OvertakenModel(BaseChatModel):
    """Streams two sentences; between them, the device asks something newer (``overtake`` takes that request)."""

    overtake: Any = None

    @property
    def _llm_type(self) -> str:
        return "overtaken"

    def _stream(self, messages, stop=None, run_manager=None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="첫 문장이에요. "))
        self.overtake()
        yield ChatGenerationChunk(message=AIMessageChunk(content="마지막 문장이에요"))  # released only at the end

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        raise AssertionError("stream only")


def test_an_answer_overtaken_while_it_was_written_is_not_kept(tmp_path, connect):
    history = SqliteHistory(tmp_path / "h.sqlite")
    older, newer = new_request_id(), new_request_id()
    model = OvertakenModel(overtake=lambda: history.take_request("pi-1", newer))
    outcome = answer_transcript(event("pi-1", "질문", older),
                                ChatDeps(model=model, history=history, publisher=Collect(connect("cloud"))))
    assert outcome.sentences == ["첫 문장이에요.", "마지막 문장이에요"] and outcome.error == "superseded"
    assert history.recent("pi-1", 10) == []


class OnceModel(BaseChatModel):
    """Streams one sentence, then the model service fails."""

    @property
    def _llm_type(self) -> str:
        return "once"

    def _stream(self, messages, stop=None, run_manager=None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="첫 문장은 이렇게 시작해요. "))
        yield ChatGenerationChunk(message=AIMessageChunk(content="그리고"))
        raise RuntimeError()  # an exception without a message

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        raise AssertionError("stream only")


def test_a_publisher_outage_during_the_answer_still_gets_the_apology_out(tmp_path, monkeypatch):
    """IoT Core (iot-data, through botocore's Stubber) accepts the first sentence, then fails four publishes:
    the error event and the apology go out as soon as it accepts again, within the turn."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    client = boto3.client("iot-data", region_name=REGION)
    sent: list[dict] = []
    client.meta.events.register("before-parameter-build.iot-data.Publish", lambda params, **_: sent.append(params))
    with Stubber(client) as stub:
        stub.add_response("publish", {})
        for _ in range(4):
            stub.add_client_error("publish", "ServiceUnavailableException", http_status_code=503)
        stub.add_response("publish", {})
        stub.add_response("publish", {})
        deps = ChatDeps(model=OnceModel(), history=SqliteHistory(tmp_path / "h.sqlite"),
                        publisher=IotDataPublisher(client), settings=ChatSettings(deadline_s=20))
        outcome = answer_transcript(event("pi-1", "말해 줘"), deps)
        stub.assert_no_pending_responses()
    delivered = [json.loads(p["payload"]) for p in sent[:1] + sent[-2:]]  # the accepted publishes
    assert delivered[0]["text"] == "첫 문장은 이렇게 시작해요."
    error = next(m for m in delivered if m.get("type") == "error")
    apology = next(m for m in delivered if m.get("text") == APOLOGY)
    assert error["detail"].startswith("model failed: RuntimeError")  # never an empty "model failed: "
    assert apology["seq"] == 1 and apology["last"] is True  # no gap in seq: the device plays it
    assert outcome is not None and outcome.error == "RuntimeError"


def test_the_first_piece_is_the_first_clause_and_the_history_keeps_the_whole_answer(tmp_path, connect):
    """The chat's default releases the first clause at a Korean connective ending (the device speaks sooner); what
    the model said is still one answer in the history."""
    history = SqliteHistory(tmp_path / "h.sqlite")
    publisher = Collect(connect("cloud"))
    model = LoopbackChatModel(answer="오늘 서울은 하루 종일 맑고 따뜻할 거예요. 저녁에는 조금 쌀쌀해요.")
    request_id = new_request_id()
    outcome = answer_transcript(event("pi-1", "오늘 날씨 어때요?", request_id),
                                ChatDeps(model=model, history=history, publisher=publisher))
    assert ChatSettings().first_clause_chars == 10
    pieces = ["오늘 서울은 하루 종일 맑고", "따뜻할 거예요.", "저녁에는 조금 쌀쌀해요."]
    assert outcome.error is None and outcome.sentences == pieces
    assert [a["text"] for a in publisher.answers(request_id) if a["text"]] == pieces
    assert [(t.question, t.answer) for t in history.recent("pi-1", 10)] == [("오늘 날씨 어때요?", " ".join(pieces))]
