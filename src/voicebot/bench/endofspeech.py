"""End of speech -> first sound: the latency a person feels, measured from the true end of their speech.

The real interpreter (VAD, Korean-aware end of turn, the recognizer interface) hears spoken Korean questions
(espeak-ng) paced in real time in a quiet room (-60 dBFS of noise, never digital silence); a synthetic streaming
recognizer gives a partial result every ``partial_every_s`` with the words of the speech it has received (Transcribe:
every 100-200 ms), optionally ``partial_lag_s`` later still, and its final result ``final_delay_s`` after the audio
ends; then the local stack with the synthetic model and TTS, and a player paced in real time. Each turn is cut short
once its first sentence plays (the next question follows). The end of speech is known from the audio itself: its
last voiced sample.

Swept over the recognizer's partial lag (0, 300, 500, 800 ms: how much later than the audio it shows each word) with
the four ways a turn may end (edge/turn.py: hangover, text, audio, both) side by side, the four at once on the same
stack for each lag; then the default with the real Vosk. The floor is what no pipeline can avoid: the model's time to
the first piece the chat releases (a first clause, or a sentence) and that piece's TTS."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voicebot.bench.stats import pct
from voicebot.bench.turns import ROOT, Device, Stack, Turn
from voicebot.edge.bargein import BargeInSettings
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.stt import SttResult
from voicebot.edge.turn import MODES
from voicebot.edge.turn_model import SmartTurnModel
from voicebot.edge.vad import VadSettings
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import QOS_AT_MOST_ONCE, ControlMessage, Topics, encode

QUESTIONS = ["오늘 서울 날씨 어때요?", "내일 비가 올까요?", "지금 몇 시예요?", "우산을 챙겨야 할까요?",
             "주말에 뭐 하면 좋을까요?", "가까운 공원을 알려 주세요."]
FRAME_MS = 30
ROOM_NOISE_DBFS = -60.0  # a quiet room


@dataclass
class Spoken:
    """A question as audio: 16 kHz int16 frames, and how long its voiced part lasts."""

    text: str
    frames: list[bytes]
    speech_s: float
    tail_s: float = 0.0
    """The silence that fills the last frame after the last voiced sample."""


def speak(text: str) -> Spoken:
    import io

    import soundfile as sf

    from voicebot.cloud.tts import EspeakTts

    samples, _ = sf.read(io.BytesIO(EspeakTts().synthesize(text).data), dtype="int16")
    voiced = np.nonzero(np.abs(samples.astype(np.int32)) > 300)[0]
    samples = samples[: voiced[-1] + 1] if voiced.size else samples  # ends on its last voiced sample
    step = 16 * FRAME_MS
    padded = np.concatenate([samples, np.zeros(-len(samples) % step, dtype=np.int16)])
    frames = [padded[i:i + step].tobytes() for i in range(0, len(padded), step)]
    return Spoken(text, frames, len(samples) / 16_000, (len(padded) - len(samples)) / 16_000)


class Script:
    """What the person is saying right now (the synthetic recognizer's ground truth), how much of it the microphone
    has delivered, and when they stopped."""

    def __init__(self) -> None:
        self.current: Spoken | None = None
        self.heard_s = 0.0
        """The part of the current question delivered so far (the interpreter passes each frame on at once)."""
        self.speech_end = 0.0
        self.ended = asyncio.Event()


class SyntheticRecognizer:
    """Streams like Transcribe: a partial result every ``partial_every_s`` with the words of the speech it has
    received by then (revealed in proportion to the speech), ``partial_lag_s`` later still for a recognizer that is
    also slow to show them; the final result ``final_delay_s`` after the audio ends."""

    name = "synthetic-stt"

    def __init__(self, script: Script, *, partial_every_s: float = 0.15, partial_lag_s: float = 0.0,
                 final_delay_s: float = 0.3) -> None:
        self.script = script
        self.partial_every_s = partial_every_s
        self.partial_lag_s = partial_lag_s
        self.final_delay_s = final_delay_s

    async def open(self) -> SyntheticSession:
        return SyntheticSession(self)


class SyntheticSession:
    def __init__(self, recognizer: SyntheticRecognizer) -> None:
        self.recognizer = recognizer
        self.spoken = recognizer.script.current
        self.heard_s = 0.0
        self.shown = 0
        self.queue: asyncio.Queue[SttResult | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.ticker = self.loop.call_later(recognizer.partial_every_s, self._tick)

    def _words_at(self, seconds: float) -> str:
        words = self.spoken.text.split() if self.spoken else []
        n = len(words) if self.spoken is None or seconds >= self.spoken.speech_s else \
            int(len(words) * seconds / self.spoken.speech_s)
        return " ".join(words[:n])

    def _tick(self) -> None:
        text = self._words_at(self.heard_s)
        if len(text) > self.shown:
            self.shown = len(text)
            self.loop.call_later(self.recognizer.partial_lag_s, self.queue.put_nowait, SttResult(text, final=False))
        self.ticker = self.loop.call_later(self.recognizer.partial_every_s, self._tick)

    async def send(self, pcm: bytes) -> None:
        # What it has received of the question: the pre-roll's silence before the question is not speech.
        self.heard_s = self.recognizer.script.heard_s

    async def finish(self) -> None:
        self.ticker.cancel()
        text = self._words_at(self.heard_s)
        self.loop.call_later(self.recognizer.final_delay_s, self.queue.put_nowait, SttResult(text, final=True))
        self.loop.call_later(self.recognizer.final_delay_s, self.queue.put_nowait, None)

    async def results(self) -> AsyncIterator[SttResult]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def close(self) -> None:
        self.ticker.cancel()


class Microphone:
    """Plays the script into the interpreter in real time: a quiet room, then each question when it is asked."""

    description = "bench microphone"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.pending: asyncio.Queue[Spoken] = asyncio.Queue()
        self.silence = bytes(2 * 16 * FRAME_MS)
        self.noise = np.random.default_rng(0)
        self.room_frames = 0  # the device listens to the room a while before anyone speaks (as after it starts)

    def _in_room(self, frame: bytes) -> bytes:
        """The frame as a microphone in a quiet room hears it: with a noise floor, never digital silence."""
        samples = np.frombuffer(frame, "<i2").astype(np.float64)
        samples += self.noise.normal(0.0, 32768 * 10 ** (ROOM_NOISE_DBFS / 20), samples.size)
        return np.clip(samples, -32768, 32767).astype("<i2").tobytes()

    async def frames(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            frames: list[bytes] = [self.silence]
            spoken = None
            if self.room_frames * FRAME_MS < 1000:
                self.room_frames += 1
            elif not self.pending.empty():
                spoken = self.pending.get_nowait()
                self.script.current, self.script.heard_s = spoken, 0.0
                frames = spoken.frames
            delivered = 0.0
            for i, frame in enumerate(frames):
                next_at += FRAME_MS / 1000
                await asyncio.sleep(max(0.0, next_at - loop.time()))  # a microphone delivers frames in real time
                delivered = time.monotonic()
                if spoken is not None:
                    self.script.heard_s = min(spoken.speech_s, (i + 1) * FRAME_MS / 1000)
                yield self._in_room(frame)
            if spoken is not None:
                # A frame is delivered once it is whole: the last voiced sample was heard the tail of the frame
                # earlier. That is the true end of speech, the moment the person stopped.
                self.script.speech_end = delivered - spoken.tail_s
                self.script.ended.set()


@dataclass
class EosTurn:
    question: str
    speech_end: float
    turn: Turn
    transcript_at: float | None = None
    stages: dict[str, float] = field(default_factory=dict)


LAGS_MS = (0, 300, 500, 800)


@dataclass(frozen=True)
class Hop:
    name: str
    ms: float
    kind: str  # "quoted" (a published figure) or "assumed" (none is published: our estimate, said so)
    source: str


#: What the AWS deployment adds to the local stack's path (the local stack already waits the synthetic model's
#: time to first token and the synthetic TTS's service time, which stand for Bedrock's and Polly's). Each figure is
#: quoted with its source, or marked as an assumption where nothing is published.
CLOUD_HOPS = (
    Hop("device -> IoT Core -> rule -> chat Lambda (asynchronous invoke)", 100, "assumed",
        "AWS documents the rule's Lambda action as an asynchronous (queued) invocation and publishes no latency: "
        "https://docs.aws.amazon.com/iot/latest/developerguide/lambda-rule-action.html"),
    Hop("Bedrock Claude Haiku 4.5 time to first token beyond the bench's 600 ms (global profile from Seoul)", 0,
        "quoted", "third-party p50 200 ms / p95 600 ms for Haiku 4.5 (jeremylongshore/claude-code-plugins-plus-"
                  "skills, clade-performance-tuning); the bench already waits 600 ms (--ttft-ms), its p95"),
    Hop("chat Lambda -> IoT Core -> rule -> speech Lambda (asynchronous invoke)", 100, "assumed",
        "as above: an asynchronous invocation, no published latency"),
    Hop("Polly first byte beyond the bench's synthetic TTS (120 ms + 2 ms per letter)", 0, "quoted",
        "third-party: 100 ms to 1 s by request size (play.ht, amazon-text-to-speech-latency); a first clause is "
        "short: the synthetic 140 ms stands"),
    Hop("speech Lambda -> IoT Core -> device (MQTT publish)", 30, "assumed",
        "one broker hop in-region plus the Pi's uplink in Korea; not published"),
)


async def run_mode(stack: Stack, spoken: list[Spoken], *, vad: VadSettings, turns: int, recognizer: dict[str, float],
                   stt: Any = None, label: str = "", turn_model: SmartTurnModel | None = None,
                   decisions: list[float] | None = None) -> list[EosTurn]:
    """``turns`` questions through the interpreter, one after the other, each cut short once it starts to play.
    ``stt``: a real recognizer instead of the synthetic one (Vosk). ``decisions`` gets the audio model's decision
    times."""
    script = Script()
    thing = f"eos-{label or vad.end_of_turn}"
    topics = Topics(ROOT, thing)
    device = Device(stack.broker.url, thing, stack.observations)
    await device.start()
    mic = Microphone(script)
    transport = Mqtt5Transport(ConnectionSettings(broker=stack.broker.url), client_id=f"bench-interpreter-{thing}")
    pending: list[Turn] = []  # this question's completed requests (an early one, then what replaced it)
    changed = asyncio.Event()

    def on_transcript(message) -> None:  # in the interpreter's loop, as the transcript goes out
        if message.state == "completed":
            pending.append(device.expect(thing, message.request_id, message.text))
            changed.set()

    async def first_heard() -> Turn:
        """The request of this question whose answer started playing (a withdrawn early one never does)."""
        while True:
            for turn in reversed(pending):
                if device.started[turn.request_id].is_set():
                    return turn
            changed.clear()
            waits = [asyncio.create_task(changed.wait())] + [
                asyncio.create_task(device.started[t.request_id].wait()) for t in pending]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    # Half-duplex here: this rig has no echo path, and the end of turn is what it measures (full duplex is measured in
    # a room of its own: bench/bargein.py). The synthetic recognizer binds each stream to the question being said
    # when it opens, so a stream opened on the room's noise just after an answer would report the last question.
    interpreter = Interpreter(transport, topics, mic, stt or SyntheticRecognizer(script, **recognizer),
                              InterpreterSettings(vad=vad, barge_in=BargeInSettings(enabled=False)),
                              on_transcript=on_transcript, turn_model=turn_model)
    stop = asyncio.Event()
    task = asyncio.create_task(interpreter.run(stop))
    results: list[EosTurn] = []
    try:
        for i in range(turns):
            s = spoken[i % len(spoken)]
            script.ended.clear()
            await mic.pending.put(s)
            await asyncio.wait_for(script.ended.wait(), 30)
            speech_end = script.speech_end
            try:
                turn = await asyncio.wait_for(first_heard(), 30)
            except TimeoutError:  # a real recognizer heard no words in that question: no turn to time
                pending.clear()
                continue
            results.append(EosTurn(s.text, speech_end, turn))
            transport.publish(topics.control, encode(ControlMessage(action="cancel", request_id=turn.request_id)),
                              QOS_AT_MOST_ONCE)  # enough: the next question
            await asyncio.wait_for(device.finished[turn.request_id].wait(), 10)
            pending.clear()  # (a corrected final of the same question is not a turn of its own)
            await asyncio.sleep(interpreter.settings.echo_tail_s + 0.5)  # the echo tail, then a pause
    finally:
        stop.set()
        await task
        await device.close()
        transport.close()
        if decisions is not None:
            decisions.extend(interpreter.turn_model_seconds)
    return results


def waterfall(rows: list[EosTurn], model: Any, tts: Any, first_clause_chars: int = 0) -> dict[str, Any]:
    """Per turn: ms from the true end of speech to each stage; p50/p95 and the floor ratio. The floor is the service
    time actually waited for: the model's time to the first piece the chat released (its first clause when the chat
    splits one off: ``first_clause_chars``) and that piece's TTS."""
    per_turn = []
    for r in rows:
        t = r.turn
        call = model.call(t.question, t.chat[0]) if t.chat else None
        first = min(t.playing) if t.playing else None
        sentence = call.first_piece(first_clause_chars) if call is not None else None
        if first is None or sentence is None or not t.tts_first or t.chat is None:
            continue
        ms = lambda x, end=r.speech_end: round((x - end) * 1000, 1)  # noqa: E731
        floor_s = (sentence[0] - call.started) + tts.service_s(sentence[1])
        per_turn.append({"transcript": ms(t.t0), "chat_invoked": ms(t.chat[0]), "first_token": ms(call.tokens[0][0]),
                         "first_sentence": ms(t.first_sentence) if t.first_sentence else None,
                         "first_audio": ms(t.first_audio) if t.first_audio else None,
                         "first_playing": ms(t.playing[first]), "floor_ms": round(floor_s * 1000, 1),
                         "ratio": round((t.playing[first] - r.speech_end) / floor_s, 3)})

    def p(key: str, q: float) -> float | None:
        return pct([v[key] for v in per_turn if v.get(key) is not None], q, digits=3 if key == "ratio" else 1)

    stages = ["transcript", "chat_invoked", "first_token", "first_sentence", "first_audio", "first_playing"]
    return {"turns": len(per_turn), "p50": {k: p(k, 0.5) for k in [*stages, "floor_ms", "ratio"]},
            "p95": {k: p(k, 0.95) for k in [*stages, "floor_ms", "ratio"]}, "rows": per_turn,
            "median_floor_ms": statistics.median([v["floor_ms"] for v in per_turn]) if per_turn else None}


def measure(stack: Stack, *, turns: int, vad: VadSettings, partial_every_s: float, final_delay_s: float,
            lags_ms: tuple[int, ...] = LAGS_MS, first_clause_chars: int = 0, vosk: bool = False) -> dict:
    """End of speech -> first audio for each partial lag and each way a turn may end (the four modes at once, each a
    device of its own on the same stack); ``vad.end_of_turn`` is the default, reported as ``"default"`` too; with
    ``vosk``, the default once more with the real Vosk recognizer on this CPU (its own lag, whatever it is)."""
    spoken = [speak(q) for q in QUESTIONS]
    model = SmartTurnModel()  # (one session for all: onnxruntime runs are thread-safe)
    decisions: list[float] = []
    by_lag: dict[str, dict[str, Any]] = {}

    async def sweep(lag_ms: int) -> list[list[EosTurn]]:
        recognizer = {"partial_every_s": partial_every_s, "partial_lag_s": lag_ms / 1000,
                      "final_delay_s": final_delay_s}
        return await asyncio.gather(*[
            run_mode(stack, spoken, vad=replace(vad, end_of_turn=mode), turns=turns, recognizer=recognizer,
                     label=f"{mode}-{lag_ms}", turn_model=model, decisions=decisions) for mode in MODES])

    for lag in lags_ms:
        runs = asyncio.run(sweep(lag))
        modes = {mode: summary(waterfall(rows, stack.model, stack.tts, first_clause_chars))
                 for mode, rows in zip(MODES, runs, strict=True)}
        by_lag[str(lag)] = {**modes, "default": modes[vad.end_of_turn]}
    result: dict[str, Any] = {"by_partial_lag_ms": by_lag, "default_mode": vad.end_of_turn}
    if vosk:
        from voicebot.edge.stt import VoskBackend

        rows = asyncio.run(run_mode(stack, spoken, vad=vad, turns=turns, recognizer={}, stt=VoskBackend(),
                                    label="vosk", turn_model=model, decisions=decisions))
        result["vosk"] = summary(waterfall(rows, stack.model, stack.tts, first_clause_chars))
    floors = [row["floor_ms"] for lag in by_lag.values() for mode in MODES for row in lag[mode]["waterfall"]["rows"]]
    result["floor_ms"] = round(statistics.median(floors), 1) if floors else None
    result["turn_model_decision_ms"] = {"p50": pct([d * 1000 for d in decisions], 0.5),
                                        "p95": pct([d * 1000 for d in decisions], 0.95), "decisions": len(decisions)}
    result["parameters"] = {"turns": turns, "early_end_ms": vad.early_end_ms, "preempt_ms": vad.preempt_ms,
                            "turn_model_ms": vad.turn_model_ms, "hangover_ms": vad.hangover_ms,
                            "partial_every_s": partial_every_s, "final_delay_s": final_delay_s,
                            "lags_ms": list(lags_ms), "first_clause_chars": first_clause_chars}
    return result


def projection(eos: dict[str, Any], lag_ms: int = 500) -> dict[str, Any]:
    """The default's measured p50 at a realistic recognizer lag (the measured one nearest ``lag_ms``) plus the hops the
    local stack does not have."""
    lag_ms = min((int(lag) for lag in eos["by_partial_lag_ms"]), key=lambda lag: abs(lag - lag_ms), default=lag_ms)
    measured = eos["by_partial_lag_ms"].get(str(lag_ms), {}).get("default", {}).get("p50")
    added = sum(h.ms for h in CLOUD_HOPS)
    return {"lag_ms": lag_ms, "measured_p50_ms": measured, "added_ms": added,
            "projected_p50_ms": round(measured + added, 1) if measured is not None else None,
            "hops": [{"name": h.name, "ms": h.ms, "kind": h.kind, "source": h.source} for h in CLOUD_HOPS]}


def summary(w: dict[str, Any]) -> dict[str, Any]:
    """One mode at one lag: p50/p95 of end of speech -> first audio playing, and its whole waterfall."""
    return {"p50": w["p50"]["first_playing"], "p95": w["p95"]["first_playing"], "turns": w["turns"],
            "transcript_p50": w["p50"]["transcript"], "ratio_p50": w["p50"]["ratio"], "waterfall": w}
