"""One real voice turn on the embedded local stack: mosquitto, the template's rules, both handlers, espeak-ng,
SQLite history and the player writing a WAV file."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import soundfile as sf
from langchain_core.messages import AIMessage, HumanMessage

from tests.conftest import Recorder
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.tts import EspeakTts
from voicebot.edge.audio import WavSink
from voicebot.local.cloud import LocalCloud
from voicebot.local.demo import DemoSettings, play_turn
from voicebot.protocol import (
    AnswerMessage,
    AudioAssembler,
    AudioMessage,
    TranscriptMessage,
    decode,
    new_request_id,
)

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`


def ask(broker, topics, text, sink):
    transcript = TranscriptMessage(request_id=new_request_id(), state="completed", text=text)
    watcher = asyncio.run(play_turn(broker.url, topics, sink, DemoSettings(timeout_s=60), lambda s: None,
                                    transcript=transcript))
    return transcript.request_id, watcher


def test_two_turns_end_to_end(broker, connect, topics, recording_model, tmp_path):
    history = SqliteHistory(tmp_path / "history.sqlite")
    observer = Recorder()
    connect("observer").subscribe(f"{topics.root}/{topics.thing}/#", 1, observer)
    sink = WavSink(tmp_path / "reply.wav")
    with LocalCloud(broker.url, model=recording_model, history=history, tts=EspeakTts(), topic_root=topics.root):
        rid1, watcher1 = ask(broker, topics, "오늘 서울 날씨 어때?", sink)
        rid2, watcher2 = ask(broker, topics, "내일은 어때?", sink)
    sink.close()

    # Answer sentences went out in order, seq 0..n, `last` only on the final one.
    answers = [decode(AnswerMessage, p) for p in observer.on(topics.answer)]
    first = [a for a in answers if a.request_id == rid1]
    assert [a.seq for a in first] == list(range(len(first))) and len(first) >= 3
    assert [a.last for a in first] == [False] * (len(first) - 1) + [True]
    assert watcher1.sentences == [a.text for a in first if a.text]
    assert "오늘 서울 날씨 어때?" in " ".join(watcher1.sentences)

    # The WAV sink holds every sentence's audio, in order, and nothing else.
    assembler = AudioAssembler()
    sentences = {}
    for payload in observer.on(topics.audio):
        done = assembler.add(decode(AudioMessage, payload))
        if done:
            sentences[(done.request_id, done.seq)] = done
    expected = []
    for rid, answer_list in ((rid1, first), (rid2, [a for a in answers if a.request_id == rid2])):
        for a in answer_list:
            if a.text:
                samples, rate = sf.read(io.BytesIO(sentences[(rid, a.seq)].data), dtype="int16")
                assert rate == 16000 and len(samples) > 1600
                expected.append(samples)
    played, rate = sf.read(tmp_path / "reply.wav", dtype="int16")
    assert rate == 16000
    assert np.array_equal(played, np.concatenate(expected))

    # History has both turns; the second prompt saw the first turn.
    turns = history.recent(topics.thing, 10)
    assert [t.request_id for t in turns] == [rid1, rid2]
    assert turns[0].question == "오늘 서울 날씨 어때?" and turns[0].answer == " ".join(watcher1.sentences)
    second_prompt = recording_model.prompts[-1]
    assert HumanMessage("오늘 서울 날씨 어때?") in second_prompt
    assert AIMessage(turns[0].answer) in second_prompt
    assert second_prompt[-1] == HumanMessage("내일은 어때?")
    assert "다음은 Human과 Assistant의 친근한 대화입니다" in second_prompt[0].content

    # The player reported what it did, and the device id everywhere is the topic's.
    events = [json.loads(p) for p in observer.on(topics.event)]
    assert [e["seq"] for e in events if e["type"] == "played" and e.get("requestId") == rid1 and "seq" in e] == \
        [a.seq for a in first if a.text]
    assert watcher2.done and not watcher1.errors and not watcher2.errors
