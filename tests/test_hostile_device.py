"""What strangers' messages and bad luck do to the player on a real mosquitto, each found by a fault run: the player
must log once, keep going, and play the next good answer sample-exact."""

from __future__ import annotations

import asyncio
import io
import struct

import numpy as np
import pytest
import soundfile as sf

from tests.test_chat_once import future_id
from tests.test_player import audio, finished, run_player, tone
from voicebot.edge.audio import AudioError, NullSink, WavSink, decode_sentence
from voicebot.edge.playback import Finished, Play, PlaybackQueue, Skip
from voicebot.edge.player import KEEP_EVENTS, Player, PlayerSettings
from voicebot.messaging import MemoryTransport
from voicebot.protocol import (
    MAX_DETAIL_CHARS,
    MAX_MESSAGE_BYTES,
    AudioMessage,
    EventMessage,
    ProtocolError,
    SentenceAudio,
    decode,
    encode,
    new_request_id,
    split_audio,
)


def test_deeply_nested_json_is_a_protocol_error_not_a_crash():
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode(AudioMessage, b"[" * 3000 + b"]" * 3000)


def test_hostile_payloads_leave_the_player_playing(connect, topics, tmp_path, caplog):
    rid = new_request_id()
    bad = [
        b"[" * 3000 + b"]" * 3000,  # RecursionError in json
        b'{"v":1,"requestId":"' + b"x" * 90_000 + b'"}',  # an error event quoting it must still fit
        encode(AudioMessage(request_id=new_request_id(), seq=999, last=True, format="wav", sample_rate=16000))
        .replace(b'"seq":999', b'"seq":100000'),
        b"\xff\xfe not json",
    ]

    def script(publish, events):
        for payload in bad:
            publish(topics.audio, payload)
        for m in audio(rid, 0, level=700, seconds=0.2) + audio(rid, 1, last=True, level=900, seconds=0.1):
            publish(topics.audio, m)
        events.wait_for(finished(rid), 10)

    player, played, events = run_player(connect, topics, tmp_path, script)
    assert list(np.unique(played)) == [700, 900] and len(played) == 4800  # the good answer, sample-exact
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == len(bad) and all(len(e["detail"]) <= MAX_DETAIL_CHARS for e in errors)
    assert not any(r.exc_info for r in caplog.records)  # logged as one line each, no tracebacks


def test_an_event_detail_is_cut_to_fit_never_refused():
    event = EventMessage(source="player", type="error", detail="x" * 200_000)
    assert len(event.detail) == MAX_DETAIL_CHARS and len(encode(event)) < MAX_MESSAGE_BYTES


def test_a_request_id_from_the_future_does_not_make_later_answers_stale():
    queue = PlaybackQueue(gap_timeout_s=1.0)
    future, later = future_id(60), new_request_id()
    queue.cancel(future, 0.0)  # a console command naming it
    for m in split_audio(request_id=future, seq=0, last=True, text="미래", audio=tone(0.1, 5), format="pcm_s16le",
                         sample_rate=16_000):
        queue.add(m, 0.0)
    for m in split_audio(request_id=later, seq=0, last=True, text="지금", audio=tone(0.1, 5), format="pcm_s16le",
                         sample_rate=16_000):
        queue.add(m, 1.0)
    assert any(isinstance(a, Play) and a.sentence.request_id == later for a in queue.next(1.0))


def test_a_late_sentence_is_skipped_and_the_rest_of_the_answer_still_plays():
    queue = PlaybackQueue(gap_timeout_s=1.0, stall_limit_s=30.0)
    rid = new_request_id()

    def arrive(seq: int, now: float, last: bool = False) -> None:
        for m in split_audio(request_id=rid, seq=seq, last=last, text=f"{seq}", audio=tone(0.1, 5),
                             format="pcm_s16le", sample_rate=16_000):
            queue.add(m, now)

    arrive(0, 0.0)
    assert isinstance(queue.next(0.0)[0], Play)
    queue.playback_done(0.1)
    assert queue.next(0.5) == [] and queue.speaking  # waiting for seq 1 within the gap
    actions = queue.next(1.2)  # seq 1 is late: skipped, the request stays open but does not hold the mic
    assert actions == [Skip(rid, 1, "gap timeout")] and queue.active_request == rid and not queue.speaking
    arrive(2, 5.0)  # the rest of the answer arrives after all
    assert [type(a) for a in queue.next(5.0)] == [Play] and queue.speaking
    queue.playback_done(5.1)
    arrive(3, 5.2, last=True)
    assert [type(a) for a in queue.next(5.2)] == [Play]
    queue.playback_done(5.3)
    assert queue.next(5.3) == [Finished(rid)]


def test_a_stalled_request_is_given_up_after_the_stall_limit():
    queue = PlaybackQueue(gap_timeout_s=1.0, stall_limit_s=10.0)
    rid = new_request_id()
    for m in split_audio(request_id=rid, seq=0, last=False, text="0", audio=tone(0.1, 5), format="pcm_s16le",
                         sample_rate=16_000):
        queue.add(m, 0.0)
    queue.next(0.0)
    queue.playback_done(0.1)
    queue.next(1.2)
    assert queue.wake_at() == pytest.approx(11.2)
    assert queue.next(11.2) == [Finished(rid, "gave up waiting")] and queue.active_request is None


def test_an_undecodable_sentence_does_not_stall_the_next_one(topics, tmp_path):
    rid = new_request_id()
    transport = MemoryTransport()
    sink = WavSink(tmp_path / "played.wav")
    broken = split_audio(request_id=rid, seq=0, last=False, text="깨진 소리", audio=b"RIFF not really a wav", format="wav",
                         sample_rate=16_000)

    async def main() -> None:
        done = asyncio.Event()
        player = Player(transport, topics, sink, PlayerSettings(gap_timeout_s=30),
                        on_event=lambda e: done.set() if e.type == "played" and e.seq is None else None)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        for m in audio(rid, 1, last=True, level=400, seconds=0.1) + broken:  # seq 1 is buffered before seq 0
            transport.deliver(topics.audio, encode(m))
        # nothing else arrives (no echo of its own events): the player must go on by itself, well before the gap
        await asyncio.wait_for(done.wait(), 10)
        stop.set()
        await task

    asyncio.run(main())
    sink.close()
    played, _ = sf.read(tmp_path / "played.wav", dtype="int16")
    assert list(np.unique(played)) == [400] and len(played) == 1600


@pytest.mark.parametrize("claimed_rate", [1, 8])
def test_a_wav_header_claiming_an_absurd_rate_is_refused_before_decoding(claimed_rate):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16_000, np.int16), 16_000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    data[24:32] = struct.pack("<II", claimed_rate, claimed_rate * 2)  # sample rate and byte rate of the fmt chunk
    with pytest.raises(AudioError, match="refused"):
        decode_sentence(SentenceAudio(request_id="r", seq=0, last=True, text="", format="wav", sample_rate=16_000,
                                      data=bytes(data)))


def test_what_the_monitor_and_the_player_remember_is_bounded(topics):
    from voicebot.monitor import MAX_OPEN_TURNS, MonitorFormatter
    from voicebot.protocol import TranscriptMessage

    formatter = MonitorFormatter()
    for _ in range(3 * MAX_OPEN_TURNS):  # questions whose answers never finish
        message = TranscriptMessage(request_id=new_request_id(), state="completed", text="안녕")
        formatter.lines(topics.transcript, encode(message))
    assert len(formatter.turns) == MAX_OPEN_TURNS

    transport = MemoryTransport()

    async def main() -> Player:
        reported = asyncio.Event()
        count = iter(range(1, 10**6))
        player = Player(transport, topics, NullSink(realtime=False),
                        on_event=lambda e: reported.set() if e.type == "error" and next(count) == 3000 else None)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        for i in range(3000):
            transport.deliver(topics.audio, b'{"v":1,"bad":%d}' % i)
        await asyncio.wait_for(reported.wait(), 30)
        stop.set()
        await task
        return player

    player = asyncio.run(main())
    assert len(player.events) == KEEP_EVENTS and len(player.timeline) == KEEP_EVENTS
    assert player.events[-1].detail and "bad message" in player.events[-1].detail



class BrokenSink(NullSink):
    """An output whose device went away mid-sentence (a USB speaker unplugged)."""

    async def play(self, samples) -> None:
        raise OSError("PortAudio: device unavailable")


def test_a_failed_speaker_is_reopened_and_the_next_answer_plays(topics, tmp_path):
    transport = MemoryTransport()
    reopened = WavSink(tmp_path / "after.wav")
    first, second = new_request_id(), new_request_id()

    async def main() -> None:
        done, failed = asyncio.Event(), asyncio.Event()

        def on_event(e) -> None:
            if e.type == "error" and "audio output failed" in (e.detail or ""):
                failed.set()
            if e.type == "played" and e.request_id == second and e.seq is None:
                done.set()

        player = Player(transport, topics, BrokenSink(realtime=False), reopen=lambda: reopened, on_event=on_event)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        for m in split_audio(request_id=first, seq=0, last=True, text="하나", audio=tone(0.1, 5),
                             format="pcm_s16le", sample_rate=16_000):
            transport.deliver(topics.audio, encode(m))
        await asyncio.wait_for(failed.wait(), 10)  # the failure is reported, and the output reopened meanwhile
        await player._reopening
        assert player.sink is reopened
        for m in split_audio(request_id=second, seq=0, last=True, text="둘", audio=tone(0.2, 700),
                             format="pcm_s16le", sample_rate=16_000):
            transport.deliver(topics.audio, encode(m))
        await asyncio.wait_for(done.wait(), 10)
        stop.set()
        await task

    asyncio.run(asyncio.wait_for(main(), 30))
    reopened.close()
    played, _ = sf.read(tmp_path / "after.wav", dtype="int16")
    assert list(np.unique(played)) == [700] and len(played) == 3200


class PortAudioSink(NullSink):
    """What sounddevice raises when the device vanishes: ``PortAudioError`` derives from Exception, not OSError."""

    async def play(self, samples) -> None:
        import sounddevice

        raise sounddevice.PortAudioError("Error opening OutputStream: Device unavailable [PaErrorCode -9985]")


def test_a_portaudio_error_while_reopening_never_kills_the_reopen_loop(topics, tmp_path):
    import sounddevice

    transport = MemoryTransport()
    reopened = WavSink(tmp_path / "after.wav")
    attempts: list[int] = []

    def reopen():
        attempts.append(1)
        if len(attempts) < 3:  # the card is still gone for the first two tries
            raise sounddevice.PortAudioError("Error querying device -1")
        return reopened

    first, second = new_request_id(), new_request_id()

    async def main() -> Player:
        back, done = asyncio.Event(), asyncio.Event()

        def on_event(e) -> None:
            if e.type == "started" and "audio output is back" in (e.detail or ""):
                back.set()
            if e.type == "played" and e.request_id == second and e.seq is None:
                done.set()

        player = Player(transport, topics, PortAudioSink(realtime=False), PlayerSettings(output_retry_s=0.05),
                        reopen=reopen, on_event=on_event)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        for rid, level in ((first, 5), (second, 700)):
            if rid == second:
                await asyncio.wait_for(back.wait(), 10)
            for m in split_audio(request_id=rid, seq=0, last=True, text="문장", audio=tone(0.2, level),
                                 format="pcm_s16le", sample_rate=16_000):
                transport.deliver(topics.audio, encode(m))
        await asyncio.wait_for(done.wait(), 10)
        stop.set()
        await task
        return player

    player = asyncio.run(asyncio.wait_for(main(), 30))
    reopened.close()
    assert len(attempts) == 3
    errors = [e.detail for e in player.events if e.type == "error"]
    assert any("audio output failed" in d for d in errors)
    assert sum(d.startswith("audio output unavailable") for d in errors) == 1  # said once, not at every try
    played, _ = sf.read(tmp_path / "after.wav", dtype="int16")
    assert list(np.unique(played)) == [700] and len(played) == 3200


def test_an_output_that_never_comes_back_ends_the_player_with_a_reason(topics):
    from voicebot.edge.runner import ComponentFailed

    transport = MemoryTransport()

    def reopen():
        raise OSError("no such device")

    async def main() -> None:
        player = Player(transport, topics, BrokenSink(realtime=False),
                        PlayerSettings(output_retry_s=0.05, output_give_up_s=0.2), reopen=reopen)
        task = asyncio.create_task(player.run(asyncio.Event()))
        await asyncio.wait_for(player.ready.wait(), 10)
        for m in split_audio(request_id=new_request_id(), seq=0, last=True, text="하나", audio=tone(0.1, 5),
                             format="pcm_s16le", sample_rate=16_000):
            transport.deliver(topics.audio, encode(m))
        await asyncio.wait_for(task, 10)

    with pytest.raises(ComponentFailed, match="could not be reopened"):
        asyncio.run(main())
