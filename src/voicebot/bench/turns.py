"""Timed turns through the real local stack (mosquitto, the template's rules, both handlers, players paced in real
time), with the synthetic backends; streaming, whole-answer baseline, and a fleet of devices at once."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

from voicebot.bench.synthetic import ANSWER, SyntheticChatModel, SyntheticTts
from voicebot.cloud.history import SqliteHistory
from voicebot.edge.audio import NullSink
from voicebot.edge.player import Player
from voicebot.local.broker import MosquittoBroker
from voicebot.local.cloud import LocalCloud
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    EventMessage,
    Topics,
    TranscriptMessage,
    encode,
    new_request_id,
    parse_topic,
)

ROOT = "bench"


@dataclass(frozen=True)
class BackendSettings:
    ttft_s: float = 0.6
    """Time to first token of the model (Claude Haiku 4.5 through the global profile: about half a second)."""
    tokens_per_s: float = 80.0
    token_chars: int = 2
    tts_base_s: float = 0.12
    tts_per_char_s: float = 0.002
    audio_s_per_char: float = 0.08
    answer: str = ANSWER


@dataclass
class Turn:
    mode: str
    thing: str
    request_id: str
    question: str
    t0: float
    chat: tuple[float, float] | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    tts_first: tuple[float, float] | None = None
    playing: dict[int, float] = field(default_factory=dict)
    played: dict[int, float] = field(default_factory=dict)
    done: float | None = None
    speech_spans: list[float] = field(default_factory=list)  # speech handler durations (Lambda GB-s)
    message_units: int = 0  # IoT Core metering: 5 KB steps
    messages: int = 0
    answer_chars: int = 0
    answers: int = 0


class Observations:
    """Thread-safe record of every turn; fed by the observer's MQTT callbacks, the handlers and the players."""

    def __init__(self) -> None:
        self.turns: dict[str, Turn] = {}
        self.lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes) -> None:  # SDK thread
        now = time.monotonic()
        try:
            kind = parse_topic(topic).kind
            message = json.loads(payload)
        except Exception:
            return
        with self.lock:
            turn = self.turns.get(message.get("requestId", ""))
            if turn is None:
                return
            turn.messages += 1
            turn.message_units += -(-len(payload) // 5120)
            if kind == "answer":
                turn.answers += 1
                turn.answer_chars += len(message.get("text", ""))
                if message.get("text") and turn.first_sentence is None:
                    turn.first_sentence = now
            elif kind == "audio" and turn.first_audio is None:
                turn.first_audio = now

    def on_invoke(self, tts: SyntheticTts, name: str, event: dict[str, Any], start: float, end: float) -> None:
        with self.lock:
            turn = self.turns.get(event.get("requestId", ""))
            if turn is None:
                return
            if name == "ChatFunction":
                turn.chat = (start, end)
            else:
                turn.speech_spans.append(end - start)
                if event.get("seq") == 0 and getattr(tts.last, "span", None):
                    turn.tts_first = tts.last.span


class Device:
    """One simulated device: its own connection and a player paced in real time."""

    def __init__(self, broker_url: str, thing: str, observations: Observations) -> None:
        self.topics = Topics(ROOT, thing)
        self.transport = Mqtt5Transport(ConnectionSettings(broker=broker_url), client_id=f"bench-{thing}")
        self.observations = observations
        self.finished: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}  # set when the request's first sentence starts playing
        self.player = Player(self.transport, self.topics, NullSink(realtime=True), on_event=self._on_event)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _on_event(self, event: EventMessage) -> None:  # in the device's loop
        now = time.monotonic()
        turn = self.observations.turns.get(event.request_id or "")
        if turn is None:
            return
        if event.type == "playing" and event.seq is not None:
            turn.playing.setdefault(event.seq, now)
            if event.request_id in self.started:
                self.started[event.request_id].set()
        elif event.type == "played" and event.seq is not None:
            turn.played.setdefault(event.seq, now)
        elif event.type in ("played", "interrupted", "cancelled") and event.seq is None:
            turn.done = now
            if event.request_id in self.finished:
                self.finished[event.request_id].set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self.player.run(self.stop))
        await asyncio.wait_for(self.player.ready.wait(), 30)

    def expect(self, mode: str, request_id: str, question: str) -> Turn:
        """Record a turn whose transcript is being published now (by an interpreter)."""
        self.finished[request_id], self.started[request_id] = asyncio.Event(), asyncio.Event()
        turn = Turn(mode, self.topics.thing, request_id, question, t0=time.monotonic())
        with self.observations.lock:
            self.observations.turns[request_id] = turn
        return turn

    async def ask(self, mode: str, question: str, timeout_s: float = 90.0) -> Turn:
        rid = new_request_id()
        self.finished[rid] = asyncio.Event()
        turn = Turn(mode, self.topics.thing, rid, question, t0=time.monotonic())
        with self.observations.lock:
            self.observations.turns[rid] = turn
        message = TranscriptMessage(request_id=rid, state="completed", text=question)
        await asyncio.wrap_future(self.transport.publish(self.topics.transcript, encode(message), QOS_AT_LEAST_ONCE))
        try:
            await asyncio.wait_for(self.finished[rid].wait(), timeout_s)
        except TimeoutError:
            pass  # counted as lost below: sentences that never played
        return turn

    async def close(self) -> None:
        self.stop.set()
        if self.task:
            await self.task
        self.transport.close()


@dataclass
class Stack:
    broker: MosquittoBroker
    cloud: LocalCloud
    model: SyntheticChatModel
    tts: SyntheticTts
    observations: Observations
    observer: Mqtt5Transport

    def set_streaming(self, streaming: bool) -> None:
        self.cloud.chat.settings = replace(self.cloud.chat.settings, stream_sentences=streaming)

    def close(self) -> None:
        self.observer.close()
        self.cloud.close()
        self.broker.stop()


def start_stack(backends: BackendSettings, *, workers: int) -> Stack:
    broker = MosquittoBroker().start()
    model = SyntheticChatModel(answer=backends.answer, first_token_delay_s=backends.ttft_s,
                               tokens_per_s=backends.tokens_per_s, token_chars=backends.token_chars)
    tts = SyntheticTts(base_s=backends.tts_base_s, per_char_s=backends.tts_per_char_s,
                       audio_s_per_char=backends.audio_s_per_char)
    observations = Observations()
    cloud = LocalCloud(broker.url, model=model, history=SqliteHistory(":memory:"), tts=tts, topic_root=ROOT,
                       max_workers=workers, on_invoke=lambda *a: observations.on_invoke(tts, *a))
    observer = Mqtt5Transport(ConnectionSettings(broker=broker.url), client_id="bench-observer")
    observer.subscribe(f"{ROOT}/+/transcript", QOS_AT_LEAST_ONCE, observations.on_message)
    observer.subscribe(f"{ROOT}/+/answer", QOS_AT_LEAST_ONCE, observations.on_message)
    observer.subscribe(f"{ROOT}/+/audio", QOS_AT_LEAST_ONCE, observations.on_message)
    observer.subscribe(f"{ROOT}/+/event", QOS_AT_LEAST_ONCE, observations.on_message)
    return Stack(broker, cloud, model, tts, observations, observer)


async def sequential_turns(stack: Stack, mode: str, count: int) -> list[Turn]:
    """``count`` turns, one after the other, on one device (the latency waterfall)."""
    device = Device(stack.broker.url, f"solo-{mode}", stack.observations)
    await device.start()
    try:
        return [await device.ask(mode, f"{mode} 질문 {i}: 오늘 서울 날씨 어때?") for i in range(count)]
    finally:
        await device.close()


async def fleet_turns(stack: Stack, devices: int, turns: int, *, spread_s: float = 1.0,
                      seed: int = 7) -> tuple[list[Turn], dict[str, float]]:
    """``devices`` devices at once, each asking ``turns`` questions in a row; CPU of this process and of mosquitto.

    Devices start at random moments within ``spread_s`` (people do not all stop speaking in the same millisecond);
    ``spread_s=0`` is the synchronized worst case.
    """
    rng = random.Random(seed)
    fleet = [Device(stack.broker.url, f"pi-{i:03d}", stack.observations) for i in range(devices)]
    await asyncio.gather(*(d.start() for d in fleet))
    me, broker = psutil.Process(), psutil.Process(stack.broker.pid)
    cpu0, broker0, wall0 = sum(me.cpu_times()[:2]), sum(broker.cpu_times()[:2]), time.monotonic()

    async def run(device: Device) -> list[Turn]:
        await asyncio.sleep(rng.uniform(0, spread_s))  # this device's person stops speaking now
        return [await device.ask("fleet", f"{device.topics.thing} 질문 {n}: 오늘 날씨 어때?") for n in range(turns)]

    try:
        results = await asyncio.gather(*(run(d) for d in fleet))
    finally:
        wall = time.monotonic() - wall0
        cpu = {"process_cpu_percent": round(100 * (sum(me.cpu_times()[:2]) - cpu0) / wall, 1),
               "broker_cpu_percent": round(100 * (sum(broker.cpu_times()[:2]) - broker0) / wall, 1),
               "wall_s": round(wall, 2)}
        await asyncio.gather(*(d.close() for d in fleet))
    return [t for r in results for t in r], cpu
