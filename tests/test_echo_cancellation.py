"""The pieces of full duplex on their own, without real time: the echo canceller on a simulated room, the barge-in
detector's rule, the player's far end, and hostile far-end messages."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from voicebot.bench import bargein
from voicebot.bench.room import RoomSettings, echo_of, noise, to_int16
from voicebot.edge.aec import EchoCanceller, level_db
from voicebot.edge.bargein import BargeInDetector, BargeInSettings
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.reference import ReferencePublisher
from voicebot.messaging import MemoryTransport
from voicebot.protocol import PlayerStateMessage, ReferenceMessage, Topics, encode

RATE = 16_000


def test_the_canceller_takes_the_devices_voice_out_and_leaves_a_persons():
    played = bargein.speech("오늘 서울은 하루 종일 맑고 따뜻할 거예요. 낮 최고 기온은 25도까지 올라가요.")
    room = RoomSettings(delay_s=0.08, attenuation_db=3.0)
    echo = echo_of(played.astype(np.float64), room) + noise(len(played), room, np.random.default_rng(0))
    run = bargein.offline(played, to_int16(echo))
    assert run.erle_db > 15 and run.triggers == 0  # its own voice: >15 dB less, never a barge-in
    person = bargein.speech("지금 몇 시예요").astype(np.float64)
    quiet = np.zeros(len(person) + RATE, dtype=np.int16)  # nothing playing: a person passes through
    mic = to_int16(np.concatenate([np.zeros(RATE), person]) + noise(len(person) + RATE, room,
                                                                     np.random.default_rng(1)))
    out = bargein.offline(quiet, mic).cleaned
    assert level_db(out[RATE:]) > level_db(mic[RATE:]) - 3


def test_the_far_end_is_laid_out_on_the_microphones_timeline():
    aec = EchoCanceller()
    aec.reference(10.0, np.full(1600, 1000, dtype=np.int16), now=10.0)
    far = aec._far(9.99, 480)  # 10 ms before the chunk: zeros, then the chunk
    assert (far[:160] == 0).all() and (far[160:] == 1000).all()
    aec.reference(10.05, np.zeros(0, dtype=np.int16), now=10.05)  # cut: nothing plays after 10.05
    assert aec.far_until == pytest.approx(10.05) and (aec._far(10.06, 160) == 0).all()


def test_barge_in_needs_the_persons_voice_long_enough():
    d = BargeInDetector(BargeInSettings(min_speech_ms=180))
    echo = [d.frame(voiced=True, mic_db=-15.0, out_db=-45.0) for _ in range(50)]  # 30 dB taken off: the device
    assert not any(echo)
    short = [d.frame(voiced=True, mic_db=-20.0, out_db=-22.0) for _ in range(5)]  # 150 ms of a person: not yet
    assert not any(short) and d.frame(voiced=True, mic_db=-20.0, out_db=-22.0)  # the sixth frame: a barge-in
    d.reset()
    assert not any(d.frame(voiced=True, mic_db=-60.0, out_db=-60.0) for _ in range(20))  # too faint to interrupt


def test_the_player_sends_a_sentence_ahead_in_chunks_and_says_where_it_was_cut():
    sent: list[ReferenceMessage] = []
    publisher = ReferencePublisher(sent.append, rate=48_000)
    publisher.sentence(100.0, np.ones(48_000, dtype=np.int16))  # 1 s at 48 kHz
    assert [m.start for m in sent] == pytest.approx([100.0, 100.25, 100.5, 100.75])
    assert sum(len(base64.b64decode(m.pcm)) for m in sent) == 2 * RATE  # at 16 kHz
    publisher.cut(100.4)
    assert sent[-1].start == 100.4 and sent[-1].pcm == ""


@pytest.mark.parametrize("payload", [
    b"not json", encode(ReferenceMessage(start=0.0, pcm="!!!")),  # not base64
    encode(ReferenceMessage(start=1e12, pcm=base64.b64encode(b"\0\0").decode())),  # from the far future
    b'{"v":1,"start":1.0,"pcm":"' + b"A" * 30_000 + b'"}',  # over the limit
])
def test_a_hostile_far_end_is_dropped_and_the_guard_stays(payload):
    topics = Topics("voicebot", "t1")
    interpreter = Interpreter(MemoryTransport(), topics, None, stt=None, settings=InterpreterSettings())
    interpreter._on_reference(payload)
    assert interpreter.aec is not None and interpreter.aec.far_until == float("-inf")
    interpreter._on_player_state(encode(PlayerStateMessage(state="speaking", request_id="r1")))
    assert not interpreter.duplex() and interpreter.muted()  # no far end: half-duplex, as before


def test_with_a_far_end_the_microphone_stays_open_while_the_device_speaks():
    async def main() -> tuple[bool, bool]:
        import time

        interpreter = Interpreter(MemoryTransport(), Topics("voicebot", "t1"), None, stt=None)
        interpreter._on_player_state(encode(PlayerStateMessage(state="speaking", request_id="r1")))
        pcm = base64.b64encode(np.zeros(1600, dtype="<i2").tobytes()).decode()
        interpreter._on_reference(encode(ReferenceMessage(start=time.monotonic(), pcm=pcm)))
        return interpreter.duplex(), interpreter.muted() and not interpreter.duplex()

    duplex, muted = asyncio.run(main())
    assert duplex and not muted
