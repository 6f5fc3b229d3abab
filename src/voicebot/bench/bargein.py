"""Full duplex, measured in a simulated room (bench/room.py): does the device hear a person over its own voice, and
never itself?

- ``erle``: echo return loss enhancement of the echo canceller on the device's real output (espeak-ng Korean answers)
  through rooms with 10-150 ms of delay and 0-12 dB of attenuation, nobody talking (offline, as fast as it goes).
- ``false barge-ins``: the same detector the interpreter runs (VAD on the cancelled signal, ``BargeInDetector``) over
  minutes of device speech with nobody talking, at volumes from 0.25 to 1.0, reported per 10 minutes (offline).
- ``latency``: the real player and interpreter in a live room, in real time: the device speaks an answer, a person
  starts a question over it at a chosen moment; from the person's speech onset to the player stopping. Headline: an
  interpreter whose canceller has heard the device in this room before (every answer but the first after a start);
  also the first answer after a start.
- ``room changes``: false barge-ins when the echo changes under the canceller (volume, position, sound card delay).
- ``decision sweep``: when the barge-in is decided, offline, for the same trials with the far end 1-15 ms off its
  echo, through a canceller just started and one that has heard the room before, by room.
- ``transcripts``: Vosk on a question spoken over the device's answer (after cancellation) vs the same question in a
  quiet room.
- ``cost``: CPU per second of audio of the echo canceller on this machine.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voicebot.bench.room import FRAME, LiveRoom, RoomSettings, echo_of, noise, to_int16
from voicebot.bench.stats import pct
from voicebot.edge.aec import EchoCanceller
from voicebot.edge.bargein import BargeInDetector, BargeInSettings

RATE = 16_000
ANSWERS = ["오늘 서울은 하루 종일 맑고 따뜻할 거예요. 낮 최고 기온은 25도까지 올라가요.",
           "저녁에는 바람이 조금 불 수 있어요. 외출하실 때 가벼운 겉옷을 챙기세요.",
           "내일은 구름이 많고 오후 늦게 비가 올 수 있어요. 우산을 챙기시는 게 좋겠어요."]
QUESTIONS = ["잠깐만요 내일 날씨는 어때요", "그만하고 음악 틀어 줘", "지금 몇 시예요"]
#: How far off its stamp each sentence is heard, either way (as the live rig's speaker has it: bench/room.py).
STAMP_JITTER_S = 0.002
ROOMS = [RoomSettings(delay_s=d, attenuation_db=a, seed=i) for i, (d, a) in
         enumerate([(0.01, 0.0), (0.06, 6.0), (0.15, 12.0), (0.03, 3.0), (0.1, 9.0)])]


#: The device's volume in each room while nobody talks.
VOLUMES = (1.0, 0.5, 0.25, 1.0, 0.75)


def speech(text: str) -> np.ndarray:
    import soundfile as sf

    from voicebot.cloud.tts import EspeakTts

    samples, _ = sf.read(io.BytesIO(EspeakTts().synthesize(text).data), dtype="int16")
    voiced = np.nonzero(np.abs(samples.astype(np.int32)) > 300)[0]
    return samples[voiced[0]: voiced[-1] + 1] if voiced.size else samples


def _vad():
    import webrtcvad

    vad = webrtcvad.Vad(2)
    return lambda frame: vad.is_speech(frame, RATE)


@dataclass
class OfflineRun:
    """The echo canceller and the barge-in detector over a rendered microphone signal, frame by frame, with the far
    end delivered a little ahead of its echo, as the player's reference messages arrive."""

    erle_db: float
    triggers: int
    seconds: float
    cpu_s: float
    cleaned: np.ndarray = field(repr=False)
    triggered_at_s: list[float] = field(default_factory=list)
    """When each barge-in was decided (the end of its frame, from the start of ``mic``)."""


def offline(played: np.ndarray, mic: np.ndarray, *, settings: BargeInSettings | None = None,
            warmup_s: float = 1.0, aec: EchoCanceller | None = None, start_s: float = 0.0,
            far_offset_s: float = 0.0, stamp_jitter_s: float = 0.0, seed: int = 0) -> OfflineRun:
    """``aec``: a canceller that has heard this room before (a new one if None); ``start_s``: where on its timeline
    this signal starts; ``far_offset_s``: how much earlier than its echo the far end is stamped (two processes never
    line up to the sample); ``stamp_jitter_s``: each sentence's stamp is off by up to this much more, either way,
    drawn anew per sentence (as the player's are)."""
    aec = aec or EchoCanceller()
    detector = BargeInDetector(settings)
    is_speech, is_linear_speech = _vad(), _vad()
    rng = np.random.default_rng(seed)
    references = []  # (first sample, stamp, samples): each sentence in 0.1 s chunks, as the player sends them
    for a, b in sentences(played):
        offset = far_offset_s + (rng.uniform(-stamp_jitter_s, stamp_jitter_s) if stamp_jitter_s else 0.0)
        references += [(i, start_s + i / RATE - offset, played[i:min(i + 1600, b)]) for i in range(a, b, 1600)]
    next_ref, e_in, e_out, triggered = 0, 0.0, 0.0, []
    out = np.zeros(len(mic), dtype=np.int16)
    started = time.process_time()
    for n in range(0, len(mic) - FRAME + 1, FRAME):
        while next_ref < len(references) and references[next_ref][0] <= n + 3200:  # (~200 ms ahead of its echo)
            aec.reference(references[next_ref][1], references[next_ref][2], start_s + n / RATE)
            next_ref += 1
        cleaned = aec.frame(mic[n:n + FRAME].tobytes(), start_s + n / RATE)
        out[n:n + FRAME] = np.frombuffer(cleaned, dtype="<i2")
        if n / RATE >= warmup_s:
            e_in += float(np.sum(mic[n:n + FRAME].astype(np.float64) ** 2))
            e_out += float(np.sum(out[n:n + FRAME].astype(np.float64) ** 2))
        if detector.frame(is_speech(cleaned), aec.mic_db, aec.out_db, strictness=aec.strictness,
                          linear=aec.linear_view(is_linear_speech)):
            triggered.append((n + FRAME) / RATE)
            detector.reset()
    cpu = time.process_time() - started
    return OfflineRun(round(float(10 * np.log10(e_in / max(e_out, 1.0))), 1), len(triggered), len(mic) / RATE, cpu,
                      out, triggered)


def sentences(played: np.ndarray, gap: int = 1600) -> list[tuple[int, int]]:
    """Where the sentences are in what the player played: sound between at least ``gap`` samples of silence."""
    sounding = np.flatnonzero(played != 0)
    if not sounding.size:
        return []
    breaks = np.flatnonzero(np.diff(sounding) > gap)
    starts = np.concatenate([[sounding[0]], sounding[breaks + 1]])
    ends = np.concatenate([sounding[breaks] + 1, [sounding[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def decision_sweep(trials: int = 20, offsets_ms: tuple[int, ...] = (1, 5, 10, 15),
                   jitters_ms: tuple[float, ...] = (0.0, 0.5)) -> dict[str, Any]:
    """When the barge-in is decided, offline: the live trials' rooms, volumes, onsets and questions, each replayed
    with the far end 1-15 ms off its echo (two processes never line up to the sample, and AEC3's double-talk
    handling turns on such details), through a canceller just started (the first answer after the interpreter starts)
    and through one that has heard the device in this room before (every later answer); each sentence's stamp off by
    up to ``STAMP_JITTER_S`` more or less; the warm ones again with each sentence off by up to ``jitters_ms``
    (``by_stamp_jitter_ms``: what a player that knows its sound card's clock better would get).
    Decision time only: the live trials add the control message and the speaker's buffer."""
    answer = np.concatenate([speech(a) for a in ANSWERS]).astype(np.float64)
    earlier = earlier_answers().astype(np.float64)
    questions = [speech(q).astype(np.float64) for q in QUESTIONS]
    rows: list[dict[str, Any]] = []
    for i in range(trials):
        room, volume, at = ROOMS[i % len(ROOMS)], (1.0, 0.5, 0.75)[i % 3], 1.0 + (0.37 * i) % 2.0
        question = questions[i % len(questions)]
        n = int((at + 3.0) * RATE)
        played = np.pad(answer[:n] * volume, (0, max(0, n - len(answer))))
        mic = echo_of(played, room) + noise(n, room, np.random.default_rng(i))
        mic[int(at * RATE):int(at * RATE) + len(question)] += question[: n - int(at * RATE)]
        before = np.concatenate([earlier * volume, np.zeros(RATE)])  # (then quiet until this answer)
        before_mic = to_int16(echo_of(before, room) + noise(len(before), room, np.random.default_rng(100 + i)))
        cases = [(False, STAMP_JITTER_S), (True, STAMP_JITTER_S)] + [(True, j / 1000) for j in jitters_ms]
        for warm, jitter in cases:
            for offset in offsets_ms:
                aec = EchoCanceller()
                if warm:  # the device spoke in this room a minute ago
                    offline(to_int16(before), before_mic, aec=aec, start_s=-60.0, far_offset_s=offset / 1000,
                            stamp_jitter_s=jitter, seed=i)
                run = offline(to_int16(played), to_int16(mic), aec=aec, far_offset_s=offset / 1000,
                              stamp_jitter_s=jitter, seed=100 + i)
                decided = round((run.triggered_at_s[0] - at) * 1000, 1) if run.triggered_at_s else None
                rows.append({"warm": warm, "jitter_ms": jitter * 1000, "attenuation_db": room.attenuation_db,
                             "volume": volume, "offset_ms": offset, "decided_ms": decided})

    def summary(selected: list[dict[str, Any]]) -> dict[str, Any]:
        values = [r["decided_ms"] for r in selected if r["decided_ms"] is not None and r["decided_ms"] > 0]
        return {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "runs": len(selected),
                "before_onset": sum(1 for r in selected if r["decided_ms"] is not None and r["decided_ms"] <= 0),
                "missed": sum(1 for r in selected if r["decided_ms"] is None)}

    def by_room(selected: list[dict[str, Any]]) -> dict[str, Any]:
        return {**summary(selected), "by_room_attenuation_db": {
            str(att): summary([r for r in selected if r["attenuation_db"] == att])
            for att in sorted({r["attenuation_db"] for r in selected})}}

    default = STAMP_JITTER_S * 1000
    out: dict[str, Any] = {"stamp_jitter_ms": default}
    for warm in (False, True):
        out["warm" if warm else "cold"] = by_room([r for r in rows if r["warm"] is warm and r["jitter_ms"] == default])
    out["by_stamp_jitter_ms"] = {str(j): by_room([r for r in rows if r["warm"] and r["jitter_ms"] == j])
                                 for j in sorted({*jitters_ms, default})}
    return out


def earlier_answers() -> np.ndarray:
    """What a device that has been on a while said before (about 20 s): its echo canceller has heard the room."""
    return np.concatenate([speech(t) for t in ["안녕하세요. 무엇을 도와 드릴까요? 오늘은 날씨가 좋네요.",
                                                *ANSWERS[::-1]]])


def device_speech(minutes: float, volume: float, seed: int = 0) -> np.ndarray:
    """``minutes`` of the device's answers, one after another with short pauses, at ``volume``."""
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    total = 0
    rendered = [speech(a) for a in ANSWERS]
    while total < minutes * 60 * RATE:
        clip = rendered[int(rng.integers(len(rendered)))]
        pieces += [clip, np.zeros(int(rng.uniform(0.2, 1.0) * RATE), dtype=np.int16)]
        total += len(clip) + len(pieces[-1])
    return to_int16(np.concatenate(pieces).astype(np.float64) * volume)


def erle_and_false(minutes: float) -> dict[str, Any]:
    """Nobody talks: echo return loss enhancement and barge-ins the device's own voice would have caused, over
    ``minutes`` of its speech spread over the rooms and volumes."""
    rows = []
    per = minutes / len(ROOMS)
    for i, room in enumerate(ROOMS):
        volume = VOLUMES[i]
        played = device_speech(per, volume, seed=i)
        mic = to_int16(echo_of(played.astype(np.float64), room) + noise(len(played), room,
                                                                        np.random.default_rng(i)))
        run = offline(played, mic, stamp_jitter_s=STAMP_JITTER_S, seed=i)
        rows.append({"delay_ms": round(room.delay_s * 1000), "attenuation_db": room.attenuation_db,
                     "volume": volume, "erle_db": run.erle_db, "false_barge_ins": run.triggers,
                     "seconds": round(run.seconds, 1), "cpu_percent": round(100 * run.cpu_s / run.seconds, 2)})
    seconds = sum(r["seconds"] for r in rows)
    return {"rooms": rows, "erle_db": round(float(np.median([r["erle_db"] for r in rows])), 1),
            "erle_db_min": min(r["erle_db"] for r in rows),
            "false_per_10min": round(sum(r["false_barge_ins"] for r in rows) * 600 / seconds, 2),
            "device_speech_minutes": round(seconds / 60, 1),
            "cpu_percent_per_audio_second": round(float(np.median([r["cpu_percent"] for r in rows])), 2)}


ROOM_CHANGES = ("louder_6db", "moved", "later_20ms")
#: Changes beyond what the canceller is built for: the speaker's own volume knob turned up 12 dB at once, the device
#: moved and turned up 6 dB (reported beside the others, with no target: AEC3 itself lets such echo through).
HARSH_CHANGES = ("louder_12db", "moved_louder_6db")


def changed_room(i: int, change: str, seconds: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """``seconds`` of the device's speech in room ``i`` (at that room's volume) and what the microphone hears, its
    echo changed halfway through (``ROOM_CHANGES``, ``HARSH_CHANGES``): the volume knob turned up 6 dB, the device
    moved (another reverberation), the sound card 20 ms later (an underrun); 12 dB up; moved and 6 dB up."""
    room, volume = ROOMS[i], VOLUMES[i]
    played = device_speech(seconds / 60, volume, seed=i).astype(np.float64)
    half = len(played) // 2
    echo = echo_of(played, room)
    after = {"louder_6db": lambda: echo * 2.0,
             "moved": lambda: echo_of(played, replace(room, seed=room.seed + 50)),
             "later_20ms": lambda: echo_of(played, replace(room, delay_s=room.delay_s + 0.02)),
             "louder_12db": lambda: echo * 4.0,
             "moved_louder_6db": lambda: 2.0 * echo_of(played, replace(room, seed=room.seed + 50))}[change]()
    mic = to_int16(np.concatenate([echo[:half], after[half:]]) + noise(len(played), room, np.random.default_rng(i)))
    return to_int16(played), mic


def room_changes(seconds: float = 40.0, changes: tuple[str, ...] = ROOM_CHANGES) -> dict[str, Any]:
    """Nobody talks, and halfway through the device's speech its echo changes under the canceller
    (``changed_room``). Barge-ins the device's own voice causes, before and after the change, in each room, and
    whether the linear filter was trusted when the room changed under it (then it leaves the device's echo for a
    second or so, and only the detector's checks keep it from cutting the answer)."""
    rows = []
    for i, room in enumerate(ROOMS):
        for change in changes:
            played, mic = changed_room(i, change, seconds)
            half = len(played) // 2
            aec = EchoCanceller()
            first = offline(played[:half], mic[:half], aec=aec, stamp_jitter_s=STAMP_JITTER_S, seed=i)
            trusted = aec.linear_trusted
            second = offline(played[half:], mic[half:], aec=aec, start_s=half / RATE,
                             stamp_jitter_s=STAMP_JITTER_S, seed=50 + i)
            rows.append({"attenuation_db": room.attenuation_db, "volume": VOLUMES[i],
                         "change": change, "linear_trusted_before": trusted,
                         "false_barge_ins": first.triggers + second.triggers})
    return {"changes": len(rows), "false_barge_ins": sum(r["false_barge_ins"] for r in rows),
            "linear_trusted_before": sum(r["linear_trusted_before"] for r in rows), "rows": rows}


async def recognize_pcm(backend: Any, pcm: bytes) -> str:
    """What ``backend`` makes of ``pcm`` (16 kHz int16) as one utterance: its final result."""
    session = await backend.open()
    for i in range(0, len(pcm), 2 * FRAME):
        await session.send(pcm[i:i + 2 * FRAME])
    await session.finish()
    final = ""
    async for result in session.results():
        if result.final:
            final = result.text
    await session.close()
    return final


def transcripts(vosk: Any, *, stop_after_ms: float = 300.0) -> dict[str, Any]:
    """Each of the bench's questions in a quiet room, and spoken over the device's answer (which a barge-in stops
    ``stop_after_ms`` after the person started, as it does live), after echo cancellation by a canceller that has
    heard the device in this room before (as every answer but the first after a start): what Vosk hears, and how
    many of the words it heard in the quiet it hears over the answer (the same room noise in both). And the ceiling:
    how many it keeps when the same question is said again in the same quiet room with other noise (Vosk's small
    model on espeak-ng)."""
    from voicebot.bench.endofspeech import QUESTIONS as BENCH_QUESTIONS

    room = RoomSettings(delay_s=0.06, attenuation_db=3.0)
    rows = []
    for i, q in enumerate(BENCH_QUESTIONS):
        person = speech(q).astype(np.float64)
        played = speech(ANSWERS[i % len(ANSWERS)])
        lead = int(1.5 * RATE)  # the question starts 1.5 s into the answer
        n = max(len(played), lead + len(person)) + RATE
        played = np.concatenate([played, np.zeros(n - len(played), dtype=np.int16)])
        played[lead + int(stop_after_ms * RATE / 1000):] = 0  # the barge-in stopped it
        room_noise = noise(n, room, np.random.default_rng(i))
        over = echo_of(played.astype(np.float64), room) + room_noise
        over[lead:lead + len(person)] += person
        aec = EchoCanceller()
        warm_up(aec, room, 1.0, start_s=-60.0)
        heard = slice(lead - RATE // 4, lead + len(person) + RATE // 2)
        cleaned = offline(played, to_int16(over), aec=aec).cleaned[heard]
        quiet = to_int16(np.concatenate([np.zeros(RATE // 4), person, np.zeros(RATE // 2)]) + room_noise[heard])
        again = to_int16(np.concatenate([np.zeros(RATE // 4), person, np.zeros(RATE // 2)])
                         + noise(len(person) + 3 * RATE // 4, room, np.random.default_rng(50 + i)))
        heard_quiet = asyncio.run(recognize_pcm(vosk, quiet.tobytes()))
        heard_over = asyncio.run(recognize_pcm(vosk, cleaned.tobytes()))
        heard_again = asyncio.run(recognize_pcm(vosk, again.tobytes()))
        words = heard_quiet.split()
        rows.append({"question": q, "quiet": heard_quiet, "over_the_answer": heard_over, "quiet_again": heard_again,
                     "words_kept": sum(1 for w in words if w in heard_over.split()),
                     "words_kept_again": sum(1 for w in words if w in heard_again.split()), "words": len(words)})
    total = sum(r["words"] for r in rows)

    def pct_of(key: str) -> float | None:
        return round(100 * sum(r[key] for r in rows) / total, 1) if total else None

    return {"questions": rows, "same": sum(r["quiet"] == r["over_the_answer"] for r in rows),
            "same_again": sum(r["quiet"] == r["quiet_again"] for r in rows),
            "words_kept_pct": pct_of("words_kept"), "words_kept_again_pct": pct_of("words_kept_again"),
            "stop_after_ms": stop_after_ms}


def cost() -> dict[str, Any]:
    """The echo canceller's footprint in a process of its own: peak RSS and CPU per second of audio while the
    device speaks (60 s of echo), against the same process without it."""
    import json
    import subprocess
    import sys

    code = """
import json, resource, sys, time
import numpy as np
with_aec = sys.argv[1] == "1"
from voicebot.bench.room import RoomSettings, echo_of, noise, to_int16, FRAME
played = (np.sin(np.arange(16000 * 60) * 0.05) * 6000 + np.random.default_rng(0).normal(0, 2000, 16000 * 60))
played = to_int16(played)
room = RoomSettings()
mic = to_int16(echo_of(played.astype(float), room) + noise(len(played), room, np.random.default_rng(1)))
t = time.process_time()
if with_aec:
    from voicebot.edge.aec import EchoCanceller
    aec = EchoCanceller()
    for n in range(0, len(mic) - FRAME + 1, FRAME):
        if n % 1600 == 0:
            aec.reference(n / 16000, played[n:n + 1600], n / 16000)
        aec.frame(mic[n:n + FRAME].tobytes(), n / 16000)
cpu = time.process_time() - t
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_s": cpu}))
"""
    out = {}
    for flag, name in (("0", "without"), ("1", "with")):
        proc = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, timeout=300,
                              check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rss_mb_added": round(out["with"]["rss_mb"] - out["without"]["rss_mb"], 1),
            "cpu_percent_per_audio_second": round(100 * out["with"]["cpu_s"] / 60, 2)}


def measure(broker_url: str, *, minutes: float, trials: int, vosk: Any) -> dict[str, Any]:
    """Every barge-in figure (``voicebot bench``'s ``barge_in``)."""
    quiet = erle_and_false(minutes)
    both = latency(broker_url, trials, vosk)
    live, first = both["warm"], both["first_answer"]
    return {"erle_db": quiet["erle_db"], "false_per_10min": quiet["false_per_10min"],
            "latency_ms": {"p50": live["p50"], "p95": live["p95"]}, "missed": live["missed"],
            "latency_first_answer_ms": {"p50": first["p50"], "p95": first["p95"], "missed": first["missed"]},
            "false_after_room_change": room_changes(),
            "false_after_harsh_room_change": room_changes(changes=HARSH_CHANGES),
            "decision_sweep_ms": decision_sweep(trials=max(5, trials)),
            "rooms": quiet["rooms"], "device_speech_minutes": quiet["device_speech_minutes"],
            "trials": live["trials"], "first_answer_trials": first["trials"], "transcripts": transcripts(vosk),
            "cost": cost()}


# -- in real time -------------------------------------------------------------------------------------------------------


async def live_trial(broker_url: str, thing: str, *, room: RoomSettings, person_after_s: float | None,
                     question: np.ndarray, answer: bytes, stt: Any, barge_in: bool = True,
                     volume: float = 1.0, warm: bool = False) -> dict[str, Any]:
    """The real player and interpreter in a live room: the player speaks ``answer`` (WAV bytes); ``person_after_s``
    into it, a person says ``question`` over it. Returns when it stopped, the barge-in and transcript seen.
    ``warm``: the interpreter's echo canceller has heard the device in this room before (every answer but the first
    after it starts); else this is the first answer it hears."""
    from voicebot.audio_parts import split_audio
    from voicebot.edge.interpreter import Interpreter, InterpreterSettings
    from voicebot.edge.player import Player, PlayerSettings
    from voicebot.messaging import ConnectionSettings, Mqtt5Transport
    from voicebot.protocol import (
        QOS_AT_LEAST_ONCE,
        EventMessage,
        Topics,
        TranscriptMessage,
        encode,
        new_request_id,
    )

    live = LiveRoom(room)
    topics = Topics("bargebench", thing)
    connect = lambda name: Mqtt5Transport(ConnectionSettings(broker=broker_url),  # noqa: E731
                                          client_id=f"bench-{name}-{thing}")
    player_t, interp_t, speaker_t = connect("player"), connect("interpreter"), connect("cloud")
    events: list[tuple[float, EventMessage]] = []
    transcripts: list[TranscriptMessage] = []
    player = Player(player_t, topics, live.sink, PlayerSettings(volume=volume),
                    on_event=lambda e: events.append((time.monotonic(), e)))
    interpreter = Interpreter(interp_t, topics, live.microphone, stt,
                              InterpreterSettings(barge_in=BargeInSettings(enabled=barge_in)),
                              on_transcript=lambda m: transcripts.append(m))
    if warm and interpreter.aec is not None:
        warm_up(interpreter.aec, room, volume)
    # The player runs on a loop (a thread) of its own, as it runs in a process of its own on a device: the
    # interpreter's work (a recognizer taking the buffered speech) never delays the speaker.
    import threading

    stop, player_stop = asyncio.Event(), threading.Event()
    ready = threading.Event()

    async def player_main() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(player.run(stopping))
        await asyncio.wait_for(player.ready.wait(), 10)
        ready.set()
        await asyncio.to_thread(player_stop.wait)
        stopping.set()
        await task

    player_thread = threading.Thread(target=asyncio.run, args=(player_main(),), daemon=True)
    player_thread.start()
    await asyncio.to_thread(ready.wait, 10)
    tasks = [asyncio.create_task(interpreter.run(stop))]
    await asyncio.sleep(1.0)  # the room's noise floor
    rid = new_request_id()
    for m in split_audio(request_id=rid, seq=0, last=True, text="answer", audio=answer, format="wav",
                         sample_rate=RATE):
        await asyncio.wrap_future(speaker_t.publish(topics.audio, encode(m), QOS_AT_LEAST_ONCE))
    started = await _wait_for(lambda: next((t for t, e in events if e.type == "playing" and e.request_id == rid),
                                           None), 10)
    onset = None
    if person_after_s is not None and started is not None:
        onset = started + person_after_s
        live.say(question.astype(np.float64), at=onset)
    stopped = await _wait_for(lambda: next((t for t, e in events if e.request_id == rid and e.seq is None
                                            and e.type in ("played", "cancelled", "interrupted")), None), 30)
    if person_after_s is not None:
        await _wait_for(lambda: next((m for m in transcripts if m.state == "completed"), None), 10)
    await asyncio.sleep(0.5)
    stop.set()
    player_stop.set()
    live.microphone.running = False
    await asyncio.gather(*tasks)
    await asyncio.to_thread(player_thread.join, 10)
    for t in (player_t, interp_t, speaker_t):
        t.close()
    cut = next((e.type for _, e in events if e.request_id == rid and e.seq is None
                and e.type in ("cancelled", "interrupted")), None)
    stopped = stopped + live.sink.latency_s if stopped else None  # (what was in the speaker's buffer still plays)
    return {"onset": onset, "stopped": stopped, "cut": cut is not None, "barge_ins": interpreter.barge_ins,
            "latency_ms": round((stopped - onset) * 1000, 1) if onset and stopped and cut else None,
            "decided_ms": round((interpreter.barged_in_at - onset) * 1000, 1)
            if onset and interpreter.barged_in_at else None, "early_frames": live.early_frames,
            "transcripts": [m.text for m in transcripts if m.state == "completed"]}


def warm_up(aec: EchoCanceller, room: RoomSettings, volume: float, start_s: float | None = None) -> None:
    """``aec`` hears what the device said in ``room`` a minute ago (then quiet), offline; ``start_s``: where that
    starts on its timeline (a minute before now on the monotonic clock if None)."""
    played = np.concatenate([earlier_answers() * volume, np.zeros(RATE)])
    mic = to_int16(echo_of(played, room) + noise(len(played), room, np.random.default_rng(room.seed + 7)))
    start = time.monotonic() - 60.0 - len(played) / RATE if start_s is None else start_s - len(played) / RATE
    offline(to_int16(played), mic, aec=aec, start_s=start, stamp_jitter_s=STAMP_JITTER_S, seed=room.seed)


async def _wait_for(probe, within: float):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        await asyncio.sleep(0.01)
    return None


def latency(broker_url: str, trials: int, stt: Any) -> dict[str, Any]:
    """Barge-in latency in real time: person onsets spread over the answer, rooms and volumes varied."""
    from voicebot.cloud.tts import EspeakTts

    answer = EspeakTts().synthesize(" ".join(ANSWERS)).data
    out: dict[str, Any] = {}
    for warm in (True, False):
        rows = []
        for i in range(trials):
            question = speech(QUESTIONS[i % len(QUESTIONS)])  # (onsets 1.0-3.0 s into the answer)
            r = asyncio.run(live_trial(broker_url, f"lat-{i}-{int(warm)}", room=ROOMS[i % len(ROOMS)],
                                       person_after_s=1.0 + (0.37 * i) % 2.0, question=question, answer=answer,
                                       stt=stt, volume=(1.0, 0.5, 0.75)[i % 3], warm=warm))
            rows.append({"attenuation_db": ROOMS[i % len(ROOMS)].attenuation_db,
                         **{k: r[k] for k in ("latency_ms", "decided_ms", "early_frames", "cut", "barge_ins",
                                              "transcripts")}})
        values = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
        out["warm" if warm else "first_answer"] = {"trials": rows, "p50": pct(values, 0.5), "p95": pct(values, 0.95),
                                                   "missed": sum(1 for r in rows if not r["cut"])}
    return out
