"""The player loop on a real mosquitto: gap timeout, speech errors, console commands, the stop word, bad input."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.conftest import Recorder
from voicebot.edge.audio import WavSink
from voicebot.edge.player import Player, PlayerSettings
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    CommandMessage,
    ControlMessage,
    EventMessage,
    encode,
    new_request_id,
    split_audio,
)


def tone(seconds: float, level: int) -> bytes:
    return np.full(int(16_000 * seconds), level, dtype="<i2").tobytes()


def run_player(connect, topics, tmp_path, script, *, gap_timeout_s: float = 3.0):
    """Start a player with a WAV sink, run ``script(publish, events)`` against it, return what it played and said."""
    events = Recorder()
    connect("observer").subscribe(topics.event, 1, events)
    cloud = connect("cloud")

    def publish(topic: str, message) -> None:
        payload = message if isinstance(message, bytes) else encode(message)  # bytes: a raw (maybe hostile) payload
        cloud.publish(topic, payload, QOS_AT_LEAST_ONCE).result(5)

    sink = WavSink(tmp_path / "played.wav")

    async def main() -> Player:
        player = Player(connect("player"), topics, sink, PlayerSettings(gap_timeout_s=gap_timeout_s))
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        await asyncio.to_thread(script, publish, events)
        stop.set()
        await task
        return player

    player = asyncio.run(main())
    sink.close()
    import soundfile as sf

    played, _ = sf.read(tmp_path / "played.wav", dtype="int16")
    return player, played, [json.loads(p) for p in events.on(topics.event)]


def audio(rid: str, seq: int, *, last: bool = False, level: int = 1000, seconds: float = 0.1):
    return split_audio(request_id=rid, seq=seq, last=last, text=f"문장 {seq}", audio=tone(seconds, level),
                       format="pcm_s16le", sample_rate=16_000)


def finished(rid: str):
    return lambda ms: any(rid.encode() in p and b'"played"' in p and b'"seq"' not in p for _, p in ms)


def test_a_missing_sentence_is_skipped_after_the_gap_timeout(connect, topics, tmp_path):
    rid = new_request_id()

    def script(publish, events):
        for m in audio(rid, 0, level=100) + audio(rid, 2, last=True, level=300):
            publish(topics.audio, m)
        events.wait_for(finished(rid), 10)

    _, played, events = run_player(connect, topics, tmp_path, script, gap_timeout_s=0.3)
    assert [(e["type"], e.get("seq")) for e in events if e["type"] in ("skipped", "played") and "seq" in e] == [
        ("played", 0), ("skipped", 1), ("played", 2)]
    assert list(np.unique(played)) == [100, 300] and len(played) == 3200


def test_a_speech_error_skips_its_sentence_at_once(connect, topics, tmp_path):
    rid = new_request_id()

    def script(publish, events):
        for m in audio(rid, 0):
            publish(topics.audio, m)
        publish(topics.event, EventMessage(source="speech", type="error", request_id=rid, seq=1, last=True,
                                           detail="Polly refused"))
        events.wait_for(finished(rid), 10)

    # A gap timeout of a minute: finishing at all proves the error event did it.
    _, _, events = run_player(connect, topics, tmp_path, script, gap_timeout_s=60)
    assert ("skipped", 1, "synthesis failed") in [(e["type"], e.get("seq"), e.get("detail")) for e in events]


def test_console_cancel_stops_playback_and_volume_applies(connect, topics, tmp_path):
    rid, nxt = new_request_id(), new_request_id()

    def script(publish, events):
        publish(topics.command, CommandMessage(action="volume", value=0.5))
        events.wait_for(lambda ms: any(b'"volume"' in p for _, p in ms), 10)
        for m in audio(rid, 0, level=1000, seconds=30):  # long enough to be cut off
            publish(topics.audio, m)
        events.wait_for(lambda ms: any(b'"playing"' in p for _, p in ms), 10)
        publish(topics.command, CommandMessage(action="cancel"))
        events.wait_for(lambda ms: any(b'"cancelled"' in p for _, p in ms), 10)
        for m in audio(rid, 1, last=True):  # the rest of the cancelled answer is dropped
            publish(topics.audio, m)
        for m in audio(nxt, 0, last=True, level=2000):  # the next question plays normally
            publish(topics.audio, m)
        events.wait_for(finished(nxt), 10)

    player, played, events = run_player(connect, topics, tmp_path, script)
    assert player.volume == 0.5
    assert len(played) < 16_000 * 30  # the 30 s sentence was cut
    assert set(np.unique(played)) <= {500, 1000}  # half volume: 1000 -> 500, 2000 -> 1000
    assert not any(e.get("requestId") == rid and e.get("seq") == 1 for e in events)


def test_stop_word_control_cancels_the_named_request(connect, topics, tmp_path):
    rid = new_request_id()

    def script(publish, events):
        for m in audio(rid, 0, seconds=30):
            publish(topics.audio, m)
        events.wait_for(lambda ms: any(b'"playing"' in p for _, p in ms), 10)
        publish(topics.control, ControlMessage(action="cancel", request_id=rid))
        events.wait_for(lambda ms: any(b'"cancelled"' in p for _, p in ms), 10)

    _, played, events = run_player(connect, topics, tmp_path, script)
    assert [e["type"] for e in events if e.get("requestId") == rid][-1] == "cancelled"
    assert len(played) < 16_000 * 30


@pytest.mark.slow  # a real process or real timeouts
def test_player_command_waits_for_a_broker_that_is_not_up_yet(tmp_path):
    import queue
    import signal
    import subprocess
    import sys
    import threading

    from voicebot.local.broker import MosquittoBroker, free_port
    from voicebot.messaging import ConnectionSettings, Mqtt5Transport
    from voicebot.protocol import Topics

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "player", "--broker", f"mqtt://127.0.0.1:{port}",
                             "--thing", "late-pi", "--sink", f"wav:{tmp_path / 'late.wav'}"],
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()

    def wait_line(text: str) -> None:
        while text not in lines.get(timeout=60):
            pass

    broker = None
    try:
        wait_line("cannot reach")  # one clear line, and it keeps running
        broker = MosquittoBroker(port=port).start()
        wait_line("player ready")
        topics = Topics("voicebot", "late-pi")
        events = Recorder()
        client = Mqtt5Transport(ConnectionSettings(broker=broker.url), client_id="late-cloud")
        client.subscribe(topics.event, 1, events)
        rid = new_request_id()
        for m in audio(rid, 0, last=True):
            client.publish(topics.audio, encode(m), 1).result(5)
        events.wait_for(finished(rid), 20)
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if broker:
            broker.stop()
    assert proc.returncode == 0
