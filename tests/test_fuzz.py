"""Thousands of malformed payloads on every topic the device and the rules listen to, against the whole local
stack (mosquitto, the template's rules, chat, speech, the player and the interpreter): every loop stays alive, no
message produces a traceback, and the next good turn plays sample-exact."""

from __future__ import annotations

import asyncio
import json
import logging
import random

import numpy as np
import soundfile as sf

from tests.conftest import Recorder
from tests.test_interpreter import PushSource
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import EspeakTts
from voicebot.edge.audio import WavSink, decode_sentence
from voicebot.edge.interpreter import Interpreter
from voicebot.edge.player import Player
from voicebot.edge.stt import NullSttBackend
from voicebot.local.cloud import LocalCloud
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    AudioAssembler,
    AudioMessage,
    TranscriptMessage,
    decode,
    encode,
    new_request_id,
)

PER_TOPIC = 600

SHAPES = {  # a valid-looking body per topic, which the mutations below always break
    "transcript": {"v": 1, "requestId": "r", "state": "completed", "text": "안녕하세요"},
    "answer": {"v": 1, "requestId": "r", "seq": 0, "text": "문장입니다.", "last": False},
    "audio": {"v": 1, "requestId": "r", "seq": 0, "format": "wav", "sampleRate": 16000, "audio": ""},
    "event": {"v": 1, "source": "speech", "type": "error", "requestId": "r", "seq": 0},
    "command": {"v": 1, "action": "cancel"},
    "control": {"v": 1, "action": "cancel"},
    "player": {"v": 1, "state": "speaking"},
}
REQUIRED = {"transcript": ["requestId", "state", "text"], "answer": ["requestId", "seq", "text"],
            "audio": ["requestId", "seq", "format", "sampleRate"], "event": ["source", "type"],
            "command": ["action"], "control": ["action"], "player": ["state"]}
BAD_VALUES = [None, [], {}, "", "x" * 5000, -1, 10**30, 1.5, float("nan"), True, "𝕏" * 300, {"$": [1] * 50}]


def malformed(kind: str, rng: random.Random) -> bytes:
    """One payload that no valid message of ``kind`` can be."""
    choice = rng.randrange(8)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    if choice == 1:
        depth = rng.randrange(500, 5000)
        return b"[" * depth + b"]" * depth
    if choice == 2:
        return json.dumps(rng.choice([[], [1, 2], 3, "text", None, True])).encode()
    if choice == 3:
        return b'{"v":1,"blob":"' + b"A" * rng.randrange(100_001, 300_000) + b'"}'
    body = dict(SHAPES[kind])
    if choice == 4:
        body["v"] = rng.choice([0, 2, "1", None, 1.5, 10**30])
    elif choice == 5:
        del body[rng.choice(REQUIRED[kind])]
    else:
        field = rng.choice(REQUIRED[kind])
        body[field] = rng.choice([v for v in BAD_VALUES if not isinstance(v, str) or field not in ("text",)])
        if kind in ("transcript", "answer") and field == "text":
            body[field] = rng.choice([None, [], {}, 12, "가" * 20_000])
        if field == "requestId":
            body[field] = rng.choice([None, 12, [], "r" * 65])
        if field in ("state", "action", "format", "source", "type"):
            body[field] = rng.choice(["explode", None, 7, ["completed"]])
    return json.dumps(body, ensure_ascii=False, allow_nan=True).encode()


def test_thousands_of_malformed_payloads_then_a_good_turn_plays_sample_exact(broker, connect, topics, tmp_path,
                                                                              caplog):
    caplog.set_level(logging.WARNING)
    rng = random.Random(20261201)
    kinds = {"transcript": topics.transcript, "answer": topics.answer, "audio": topics.audio, "event": topics.event,
             "command": topics.command, "control": topics.control, "player": topics.player_state}
    observer = Recorder()
    connect("observer").subscribe(f"{topics.root}/{topics.thing}/#", 1, observer)
    device = connect("fuzzer")
    sink = WavSink(tmp_path / "played.wav")
    good = TranscriptMessage(request_id=new_request_id(), state="completed", text="오늘 날씨 알려 주세요")

    async def main() -> None:
        stop = asyncio.Event()
        player = Player(connect("player"), topics, sink)
        interpreter = Interpreter(connect("interpreter"), topics, PushSource(), NullSttBackend())
        loops = [asyncio.create_task(player.run(stop)), asyncio.create_task(interpreter.run(stop))]
        await asyncio.wait_for(player.ready.wait(), 10)

        def fuzz() -> None:
            futures = [device.publish(topic, malformed(kind, rng), QOS_AT_LEAST_ONCE)
                       for _ in range(PER_TOPIC) for kind, topic in kinds.items()]
            for future in futures:
                future.result(60)

        await asyncio.to_thread(fuzz)
        assert not any(loop.done() for loop in loops)  # every loop is alive
        await asyncio.to_thread(lambda: device.publish(topics.transcript, encode(good), QOS_AT_LEAST_ONCE).result(5))
        await asyncio.to_thread(observer.wait_for, lambda ms: any(
            t == topics.event and b'"played"' in p and good.request_id.encode() in p and b'"seq"' not in p
            for t, p in ms), 120)
        assert not any(loop.done() for loop in loops)
        stop.set()
        await asyncio.gather(*loops)

    with LocalCloud(broker.url, model=LoopbackChatModel(), history=SqliteHistory(tmp_path / "h.sqlite"),
                    tts=EspeakTts(), topic_root=topics.root, max_workers=4) as cloud:
        asyncio.run(main())
        assert cloud.engine is not None
    sink.close()

    assert not [r for r in caplog.records if r.exc_info], "a malformed message produced a traceback"
    # what the speech side sent for the good turn, decoded, is exactly what the speaker got
    assembler, sentences = AudioAssembler(), {}
    for topic, payload in observer.messages:
        if topic == topics.audio and good.request_id.encode() in payload[:300]:
            message = decode(AudioMessage, payload)
            if message.request_id == good.request_id and (done := assembler.add(message)):
                sentences[done.seq] = decode_sentence(done)[0]
    expected = np.concatenate([sentences[seq] for seq in sorted(sentences)])
    played, _ = sf.read(tmp_path / "played.wav", dtype="int16")
    assert len(sentences) >= 2 and np.array_equal(played, expected)
