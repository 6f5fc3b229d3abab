"""The pieces of full duplex on their own, without real time: the echo canceller on a simulated room, the barge-in
detector's rule, the player's far end, and hostile far-end messages."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest

from voicebot.bench import bargein
from voicebot.bench.room import RoomSettings, echo_of, noise, to_int16
from voicebot.edge import aec as aec_module
from voicebot.edge.aec import EchoCanceller, LinearEchoFilter, level_db
from voicebot.edge.bargein import BargeInDetector, BargeInSettings, LinearView
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
    send_rest = publisher.sentence(100.0, np.ones(48_000, dtype=np.int16))  # 1 s at 48 kHz
    assert [m.start for m in sent] == [100.0]  # the first chunk before playback starts, the rest after
    send_rest()
    assert [m.start for m in sent] == pytest.approx([100.0, 100.25, 100.5, 100.75])
    assert sum(len(base64.b64decode(m.pcm)) for m in sent) == 2 * RATE  # at 16 kHz
    publisher.cut(100.4)
    assert sent[-1].start == 100.4 and sent[-1].pcm == ""
    sent.clear()
    send_rest = publisher.sentence(200.0, np.ones(48_000, dtype=np.int16))
    publisher.cut(200.3)  # cut before the rest went out: nothing of what is not played is sent
    send_rest()
    assert [m.start for m in sent] == pytest.approx([200.0, 200.3, 200.25])


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


@pytest.mark.parametrize("far_end_comes", [True, False])
def test_a_question_under_way_when_the_answer_starts_goes_on_until_the_far_end_is_due(far_end_comes):
    """The player says "speaking" before it has decoded the sentence, and sends the far end before it plays it: in
    between, the microphone hears only the person, so their utterance goes on (it was cut here, losing its first
    words). A player whose far end never comes: half-duplex again after the grace, as before."""
    from tests.speech_fixtures import frames_of, in_room, silence, spoken
    from voicebot.edge.interpreter import FAR_END_GRACE_S
    from voicebot.edge.stt import NullSttBackend

    now = [100.0]
    interpreter = Interpreter(MemoryTransport(), Topics("voicebot", "t1"), None, NullSttBackend(),
                              clock=lambda: now[0])
    frames = frames_of(in_room(np.concatenate([silence(0.3), spoken("그런데 내일은 어때요")])))

    async def main() -> tuple[bool, bool, bool]:
        for frame in frames[:25]:
            await interpreter.process(frame)
        talking = interpreter._utterance is not None
        interpreter._on_player_state(encode(PlayerStateMessage(state="speaking", request_id="r1", far_end=True)))
        for frame in frames[25:30]:
            now[0] += 0.03
            await interpreter.process(frame)
        kept = interpreter._utterance is not None
        if far_end_comes:
            import time

            pcm = base64.b64encode(np.zeros(1600, dtype="<i2").tobytes()).decode()
            interpreter._on_reference(encode(ReferenceMessage(start=time.monotonic(), pcm=pcm)))
        now[0] += FAR_END_GRACE_S
        for frame in frames[30:33]:
            await interpreter.process(frame)
        after = interpreter._utterance is not None
        await interpreter.close()
        return talking, kept, after

    talking, kept, after = asyncio.run(main())
    assert talking and kept  # the answer's start cut nothing
    assert after is far_end_comes  # full duplex on with the far end; without it, muted again (half-duplex)


def test_a_person_far_louder_than_any_echo_passes_as_heard_and_the_devices_voice_never_does():
    """AEC3, still learning the room, takes a person's voice down with the echo it fears (30-40 dB). Where the
    microphone is far louder than any echo the far end has made (a speaker the microphone barely hears), the frame
    passes as heard; in a loud room, the device's own voice never does."""
    answer = bargein.speech(bargein.ANSWERS[0])
    person = bargein.speech("그런데 내일은 어때요").astype(np.float64) * 0.5
    for room, talks in [(RoomSettings(delay_s=0.06, attenuation_db=40.0), True),
                        (RoomSettings(delay_s=0.01, attenuation_db=0.0), False)]:
        mic = echo_of(answer.astype(np.float64), room) + noise(len(answer), room, np.random.default_rng(2))
        at = RATE // 2  # half a second into the answer
        if talks:
            mic[at:at + len(person)] += person[: len(mic) - at]
        mic16 = to_int16(mic)
        aec = EchoCanceller()
        aec.reference(0.0, answer, 0.0)
        frames = range(0, len(mic16) - 480 + 1, 480)
        out = np.concatenate([np.frombuffer(aec.frame(mic16[k:k + 480].tobytes(), k / RATE), "<i2") for k in frames])
        if talks:
            said = slice(at, at + len(person))
            assert aec.passed > 10 and level_db(out[said]) > level_db(mic16[said]) - 3  # the person, as heard
        else:
            assert aec.passed == 0 and level_db(out) < level_db(mic16) - 15  # the device's own voice: cancelled


def test_a_canceller_still_learning_the_room_never_lets_the_devices_first_words_cut_themselves():
    """The first seconds of the first answer after the interpreter starts: AEC3 has not learnt the room and lets
    bursts of the device's own voice through (the bench's rooms cut 8 of 240 such starts without the learning rule:
    this room, these alignments among them). While it learns, a barge-in needs twice the person's voice."""
    answer = np.concatenate([bargein.speech(a) for a in bargein.ANSWERS])[: 3 * RATE]
    room = bargein.ROOMS[1]  # 60 ms, 6 dB
    mic = to_int16(echo_of(answer.astype(np.float64), room) + noise(len(answer), room, np.random.default_rng(6)))
    for offset_ms in (10, 15):  # far end and echo a little apart, as the two processes have them
        aec, strict, plain = EchoCanceller(), BargeInDetector(), BargeInDetector()
        aec.reference(-offset_ms / 1000, answer, 0.0)
        vad = bargein._vad()
        cuts = {"learning rule": 0, "without it": 0}
        for k in range(0, len(mic) - 480 + 1, 480):
            out = aec.frame(mic[k:k + 480].tobytes(), k / RATE)
            voiced = vad(out)
            cuts["learning rule"] += strict.frame(voiced, aec.mic_db, aec.out_db, strictness=aec.strictness)
            cuts["without it"] += plain.frame(voiced, aec.mic_db, aec.out_db)
        assert cuts["learning rule"] == 0 and cuts["without it"] > 0, (offset_ms, cuts)


def test_the_linear_filters_view_makes_a_person_only_when_it_left_most_of_the_frame_and_no_echo():
    d = BargeInDetector()
    person = LinearView(voiced=True, level_db=-22.0, corr=0.05, aec3_db=-55.0, aec3_floor_db=-62.0)
    assert d.person(False, -20.0, -55.0, person)  # AEC3 took the person down; the linear filter did not
    assert not d.person(False, -20.0, -55.0, None)  # (not trusted here: AEC3's output alone)
    assert not d.person(False, -20.0, -55.0, person._replace(corr=0.6))  # echo like its own estimate: a room change
    assert not d.person(False, -20.0, -55.0, person._replace(level_db=-38.0))  # 18 dB taken off: the device's echo
    assert not d.person(False, -20.0, -55.0, person._replace(voiced=False))
    assert not d.person(False, -45.0, -55.0, person._replace(level_db=-46.0))  # too faint to interrupt


def loud_room_answer(person_at_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """An answer at full volume where the speaker is as loud at the microphone as the person (0 dB, 10 ms)."""
    room = bargein.ROOMS[0]
    played = np.concatenate([bargein.speech(a) for a in bargein.ANSWERS]).astype(np.float64)[: 5 * RATE]
    mic = echo_of(played, room) + noise(len(played), room, np.random.default_rng(3))
    if person_at_s is not None:
        person = bargein.speech("잠깐만요 내일 날씨는 어때요").astype(np.float64)
        at = int(person_at_s * RATE)
        mic[at:at + len(person)] += person[: len(mic) - at]
    return to_int16(played), to_int16(mic)


def test_a_linear_filter_that_knows_the_room_hears_a_person_over_an_echo_as_loud_and_aec3_alone_does_not():
    """Speex's linear filter is trusted once it has shown it takes this room's echo down (not in the first seconds);
    then a person talking over a full-volume answer is found within 300 ms of audio, where AEC3's output alone, which
    takes the person down with the echo, needs far longer."""
    decided = {}
    for linear in (True, False):
        aec = EchoCanceller(linear=linear)
        bargein.warm_up(aec, bargein.ROOMS[0], 1.0)
        assert aec.linear_trusted is linear
        played, mic = loud_room_answer(person_at_s=1.6)
        run = bargein.offline(played, mic, aec=aec, start_s=0.0)
        decided[linear] = run.triggered_at_s[0] - 1.6 if run.triggered_at_s else None
    assert decided[True] is not None and 0 < decided[True] <= 0.3, decided
    assert decided[False] is None or decided[False] > 0.4, decided
    fresh, (played, mic) = EchoCanceller(), loud_room_answer(None)
    bargein.offline(played[: 2 * RATE], mic[: 2 * RATE], aec=fresh)
    assert not fresh.linear_trusted and fresh.linear_view(bargein._vad()) is None  # 2 s in: not yet


def test_the_devices_own_voice_after_its_echo_changes_is_never_a_barge_in():
    """The volume knob turned up 10 dB or the sound card 20 ms later, in the middle of a sentence: the linear filter,
    trusted until then, leaves loud echo for a second or so. It looks like the echo it took off, so it is not a
    person; without that check it would cut the answer."""
    room = bargein.ROOMS[0]
    answer = np.concatenate([bargein.speech(a) for a in bargein.ANSWERS * 2]).astype(np.float64)
    played = answer + np.random.default_rng(4).choice([-1.0, 1.0], len(answer))  # (one sentence: no silent gap)
    half = 3 * len(played) // 4
    echo = echo_of(played, room)
    for after in (echo * 3.0, echo_of(played, RoomSettings(delay_s=room.delay_s + 0.02, attenuation_db=0.0,
                                                           seed=room.seed))):
        mic = to_int16(np.concatenate([echo[:half], after[half:]]) + noise(len(played), room,
                                                                         np.random.default_rng(4)))
        cuts = {}
        for max_corr in (0.15, 1.01):
            aec = EchoCanceller()
            bargein.offline(to_int16(played[:half]), mic[:half], aec=aec)
            assert aec.linear_trusted
            settings = BargeInSettings(linear_max_corr=max_corr)
            cuts[max_corr] = bargein.offline(to_int16(played[half:]), mic[half:], aec=aec, start_s=half / RATE,
                                             settings=settings).triggers
        assert cuts[0.15] == 0 and cuts[1.01] > 0, cuts


def test_a_linear_filter_put_off_by_a_changed_room_counts_only_where_aec3_lets_something_through():
    """After the room changes under the linear filter, what it leaves of the device's voice is voiced, loud and, frame
    by frame, sometimes unlike its estimate; AEC3, which re-learns fast, takes it all down to its floor. A person
    talking over the device gets something past AEC3 within the first frames (in the bench's loudest room, half of
    them); the linear filter's verdicts count once AEC3 let something of them through."""
    d = BargeInDetector()
    view = LinearView(voiced=True, level_db=-22.0, corr=0.05, aec3_db=-60.0, aec3_floor_db=-62.0)
    assert not any(d.frame(False, -20.0, -60.0, linear=view) for _ in range(40))  # AEC3 at its floor throughout
    d.reset()
    fired = [d.frame(False, -20.0, -60.0, linear=view._replace(aec3_db=-45.0) if i == 1 else view) for i in range(8)]
    assert fired.index(True) == d.settings.frames - 1, fired  # (the frames before it count too)


def test_the_devices_voice_after_its_room_changes_under_a_trusted_linear_filter_is_not_a_barge_in():
    """The bench's 6 dB room, each sentence heard up to 2 ms off its stamp: the linear filter is trusted when the
    volume knob is turned up 6 dB; the device's voice after it never cuts the answer, but would without the check
    that AEC3 too lets something through."""
    played, mic = bargein.changed_room(1, "louder_6db")
    half = len(played) // 2
    cuts = {}
    for over_floor in (BargeInSettings().linear_aec3_over_floor_db, -200.0):
        aec = EchoCanceller()
        bargein.offline(played[:half], mic[:half], aec=aec, stamp_jitter_s=bargein.STAMP_JITTER_S, seed=1)
        assert aec.linear_trusted
        cuts[over_floor] = bargein.offline(played[half:], mic[half:], aec=aec, start_s=half / RATE, seed=51,
                                           stamp_jitter_s=bargein.STAMP_JITTER_S,
                                           settings=BargeInSettings(linear_aec3_over_floor_db=over_floor)).triggers
    assert cuts[-200.0] > 0 and cuts[BargeInSettings().linear_aec3_over_floor_db] == 0, cuts


def test_with_every_sentence_off_its_stamp_from_the_start_the_linear_filter_still_learns_the_room(monkeypatch):
    """Every sentence heard up to 2 ms off its stamp, differently each time, from the device's first words on: the
    filter is realigned at each sentence from the rough echo path it has after a second of loud echo, and learns the
    room (it takes the device's echo down 20 dB or more). Realigned only once it had learnt the room, it never did."""
    room = bargein.ROOMS[0]
    played = bargein.device_speech(20 / 60, 1.0, seed=0)
    mic = to_int16(echo_of(played.astype(np.float64), room) + noise(len(played), room, np.random.default_rng(0)))
    median_loss, default = {}, aec_module.REALIGN_AFTER
    for realign_after in (default, 10 ** 9):
        monkeypatch.setattr(aec_module, "REALIGN_AFTER", realign_after)
        aec = EchoCanceller()
        bargein.offline(played, mic, aec=aec, stamp_jitter_s=bargein.STAMP_JITTER_S)
        median_loss[realign_after] = float(np.median(list(aec.linear.loss)))
    assert median_loss[default] >= 15.0 and median_loss[10 ** 9] < 8.0, median_loss


def test_without_libspeexdsp_the_canceller_runs_on_aec3_alone(monkeypatch, caplog):
    import ctypes.util

    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    aec = EchoCanceller()
    assert "libspeexdsp" in caplog.text
    aec.reference(0.0, np.full(4800, 3000, dtype=np.int16), 0.0)
    out = aec.frame(np.full(480, 3000, dtype=np.int16).tobytes(), 0.0)
    assert len(out) == 960 and aec.linear_view(bargein._vad()) is None and not aec.linear_trusted


def test_microphone_frames_are_laid_back_to_back_whatever_their_stamps_jitter():
    """A real source stamps each frame when the event loop gets it (a millisecond or two late, differently each
    time); the far end laid out by those stamps would jump under the echo filters. Frames follow each other to the
    sample unless a stamp says frames were skipped."""
    aec = EchoCanceller(linear=False)
    jitter = [0.0, 0.0012, -0.0008, 0.0019, 0.0003]
    times = [aec._back_to_back(k * 0.03 + j, 480) for k, j in enumerate(jitter)]
    assert times == pytest.approx([0.0, 0.03, 0.06, 0.09, 0.12], abs=1e-12)
    assert aec._back_to_back(0.5, 480) == 0.5  # frames were skipped: the stamp again


def test_each_sentence_heard_a_little_off_its_stamp_is_realigned_for_the_linear_filter(monkeypatch):
    """A linear filter needs its far end to the sample, and no player stamps a sentence that well: the earlier
    answers were heard on their stamps, this one 1.3 ms (20.8 samples) later than its stamp says. The filter's far end
    is realigned, to a fraction of a sample, from the echo path it learnt, over the sentence's first 240 ms of sound;
    without that it cancels a few dB."""
    room = bargein.ROOMS[0]
    played, mic = loud_room_answer(person_at_s=None)
    earlier = np.concatenate([bargein.earlier_answers(), np.zeros(RATE, dtype=np.int16)])
    earlier_mic = to_int16(echo_of(earlier.astype(np.float64), room) + noise(len(earlier), room,
                                                                            np.random.default_rng(5)))

    def heard(late_s: float) -> EchoCanceller:
        aec = EchoCanceller()
        bargein.offline(earlier, earlier_mic, aec=aec, start_s=-60.0)  # (each of its sentences on its stamp)
        bargein.offline(played, mic, aec=aec, far_offset_s=late_s)  # (stamped this much before it is heard)
        return aec

    def loss(aec: EchoCanceller) -> float:
        return float(np.median(list(aec.linear.loss)[-60:]))

    on_time, late = heard(0.0), heard(0.0013)
    assert late.linear.shift - on_time.linear.shift == pytest.approx(20.8, abs=0.5)
    assert loss(late) > 20
    monkeypatch.setattr(LinearEchoFilter, "_realign", lambda self: None)
    assert loss(heard(0.0013)) < 12
