"""Bad input on every topic: one clear log line, an error event where a user would want to know, and the system
keeps serving the next good message."""

from __future__ import annotations

import asyncio
import json
import logging

from tests.conftest import Recorder
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import EspeakTts
from voicebot.edge.audio import NullSink
from voicebot.edge.player import Player
from voicebot.local.cloud import LocalCloud
from voicebot.protocol import QOS_AT_LEAST_ONCE, TranscriptMessage, encode, new_request_id


def test_bad_messages_on_every_topic_then_a_good_turn(broker, connect, topics, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    observer = Recorder()
    connect("observer").subscribe(f"{topics.root}/#", 1, observer)
    device = connect("device")
    ids = {name: new_request_id() for name in ("types", "version", "long", "empty", "answer", "good")}

    def pub(topic: str, payload) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        device.publish(topic, data, QOS_AT_LEAST_ONCE).result(5)

    bad = [
        (topics.transcript, b"{not json"),
        (topics.transcript, {"v": 1, "requestId": ids["types"], "state": "completed", "text": 123}),
        (topics.transcript, {"v": 9, "requestId": ids["version"], "state": "completed", "text": "안녕"}),
        (topics.transcript, {"v": 1, "requestId": ids["long"], "state": "completed", "text": "가" * 10_000}),
        (topics.transcript, {"v": 1, "requestId": ids["empty"], "state": "completed", "text": "   "}),
        (topics.answer, {"v": 1, "requestId": ids["answer"], "seq": "first", "text": "문장"}),
        (topics.answer, {"v": 1, "requestId": ids["answer"], "seq": 1, "text": "  ", "last": False}),
        (topics.audio, json.dumps({"v": 1, "requestId": ids["answer"], "seq": 0, "format": "wav", "sampleRate": 16000,
                                   "audio": "A" * 120_000}).encode()),
        (topics.audio, b"\xff\xfe garbage"),
        (topics.audio, {"v": 1, "requestId": ids["answer"], "seq": 0, "format": "mp3", "sampleRate": 16000}),
        (topics.command, {"v": 1, "action": "explode"}),
        (topics.control, b"[]"),
    ]

    async def main() -> None:
        stop = asyncio.Event()
        player = Player(connect("player"), topics, NullSink(realtime=False))
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        for topic, payload in bad:
            pub(topic, payload)
        good = TranscriptMessage(request_id=ids["good"], state="completed", text="좋은 아침이에요")
        pub(topics.transcript, encode(good))

        def good_turn_played(msgs) -> bool:
            return any(t == topics.event and json.loads(p).get("requestId") == ids["good"]
                       and json.loads(p).get("type") == "played" and "seq" not in json.loads(p) for t, p in msgs)

        await asyncio.to_thread(observer.wait_for, good_turn_played, 60)
        stop.set()
        await task

    with LocalCloud(broker.url, model=LoopbackChatModel(), history=SqliteHistory(tmp_path / "h.sqlite"),
                    tts=EspeakTts(), topic_root=topics.root):
        asyncio.run(main())

    errors = [json.loads(p) for p in observer.on(topics.event) if json.loads(p)["type"] == "error"]
    by_source = {}
    for e in errors:
        by_source.setdefault(e["source"], []).append(e)
    chat_ids = [e.get("requestId") for e in by_source["chat"]]
    assert sorted(chat_ids) == sorted([ids["types"], ids["version"], ids["long"], ids["empty"]])
    assert any("unknown protocol version 9" in e["detail"] for e in by_source["chat"])
    assert sorted(e.get("seq", -1) for e in by_source["speech"]) == [-1, 1]  # the bad seq, then the empty sentence
    assert all(e["requestId"] == ids["answer"] for e in by_source["speech"])
    assert len(by_source["player"]) == 5 and all("bad message" in e["detail"] for e in by_source["player"])
    assert any("over the 100000-byte limit" in e["detail"] for e in by_source["player"])
    # the over-long question was refused, but the device still said something
    long_answers = [json.loads(p) for p in observer.on(topics.answer) if json.loads(p)["requestId"] == ids["long"]]
    assert [a["text"] for a in long_answers] == ["질문이 너무 길어요. 조금 짧게 다시 말씀해 주세요."]
    assert "not JSON" in caplog.text and "unknown protocol version" in caplog.text


def test_a_sentence_with_characters_xml_cannot_hold_still_makes_valid_ssml():
    """Polly rejects the whole SSML document for one control character or lone surrogate: they are dropped,
    everything else (Korean, emoji, markup characters) is kept and escaped."""
    import xml.etree.ElementTree as ET

    from voicebot.cloud.tts import ssml_for

    text = "안녕\x00하세요\x1b <b>&\"'\ud800\ufffe 😀\t끝"
    root = ET.fromstring(ssml_for(text, "120%"))
    assert root.find("prosody").text == "안녕하세요 <b>&\"' 😀\t끝"
