"""The echo guard cannot leave the device deaf: the player repeats "speaking" while it speaks, and the interpreter
listens again when the repeats stop (a lost "idle", a dead player) or after a maximum mute time."""

from __future__ import annotations

import asyncio

from tests.test_player import audio
from voicebot.edge.audio import NullSink
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.player import Player, PlayerSettings
from voicebot.messaging import MemoryTransport
from voicebot.protocol import PlayerStateMessage, decode, encode, new_request_id


class NoSource:
    description = "no microphone"

    async def frames(self):  # an async generator that ends at once
        return
        yield b""

    def close(self) -> None:
        pass


def interpreter_at(now: list[float], **settings) -> Interpreter:
    return Interpreter(MemoryTransport(), _topics(), NoSource(), stt=None, settings=InterpreterSettings(**settings),
                       clock=lambda: now[0])


def _topics():
    from voicebot.protocol import Topics

    return Topics("voicebot", "echo-guard")


def speaking() -> bytes:
    return encode(PlayerStateMessage(state="speaking", request_id="r"))


def test_a_lost_idle_unmutes_when_the_speaking_repeats_stop():
    now = [0.0]
    interpreter = interpreter_at(now, speaking_expiry_s=6.0)
    interpreter._on_player_state(speaking())
    for t in (2.0, 4.0, 6.0, 8.0):  # the player's heartbeats while it speaks
        now[0] = t
        interpreter._on_player_state(speaking())
        assert interpreter.muted()
    now[0] = 8.0 + 6.5  # then nothing: the "idle" was lost, or the player died
    assert not interpreter.muted()


def test_a_player_stuck_in_speaking_unmutes_after_the_maximum_mute():
    now = [0.0]
    interpreter = interpreter_at(now, speaking_expiry_s=6.0, max_mute_s=60.0)
    while now[0] <= 60.0:
        interpreter._on_player_state(speaking())
        assert interpreter.muted()
        now[0] += 2.0
    interpreter._on_player_state(speaking())
    assert not interpreter.muted()


def test_the_player_repeats_its_speaking_state_while_it_plays():
    transport = MemoryTransport()
    topics = _topics()
    rid = new_request_id()

    async def main() -> None:
        done = asyncio.Event()
        player = Player(transport, topics, NullSink(realtime=True), PlayerSettings(state_heartbeat_s=0.05),
                        on_event=lambda e: done.set() if e.type == "played" and e.seq is None else None)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        for m in audio(rid, 0, last=True, level=100, seconds=1.0):  # one second of speech
            transport.deliver(topics.audio, encode(m))
        await asyncio.wait_for(done.wait(), 10)
        stop.set()
        await task

    asyncio.run(main())
    states = [decode(PlayerStateMessage, p).state for t, p in transport.sent if t == topics.player_state]
    assert states[0] == "idle" and states[-1] == "idle"
    assert states.count("speaking") >= 5  # repeated while the second of audio played, not only on the change
