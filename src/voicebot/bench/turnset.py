"""Turn-taking quality: does the device wait for the whole question when a person pauses in the middle of it?

Forty two-clause Korean questions (espeak-ng, in a quiet room of about -60 dBFS), fed in real time to the real
interpreter and player on the local stack. Half pause after a clause that sounds finished and then go on ("네
알겠어요. | 그런데 내일은 어때요?"), half pause after a connective ("오늘 날씨가 좋은데 | 산책 갈까요?"); each half
has ten pauses of 250-600 ms and ten of 700-2000 ms. A synthetic streaming recognizer shows each word when its sound
has ended, ``lag`` ms later still, and gives the final result 300 ms after the stream ends. Half-duplex (BargeIn off)
by default: what the end of turn alone does; ``--full-duplex``: the player's far end reaches the interpreter (a room
where the microphone does not hear the speaker), and the rest of a question said over an early answer barges in.

Counted per way to end a turn (edge/turn.py) and recognizer lag, per question:

- premature: a completed transcript went out before the person finished the question;
- withdrawn: one of those was withdrawn (cancelled before it played, replaced by the whole question);
- half answered: the device started to play an answer to a transcript without the second clause;
- lost: no completed transcript carried both clauses (the rest of the question was dropped or asked on its own);
- barged in: (full duplex) the person's going on stopped an answer that was playing.

Run: ``python -m voicebot.bench.turnset [--lags 0,500] [--modes both] [--full-duplex] [--json FILE]`` (about 80 s
per lag on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicebot.bench.bargein import speech
from voicebot.bench.turns import ROOT, BackendSettings, Device, Stack, start_stack
from voicebot.edge.bargein import BargeInSettings
from voicebot.edge.interpreter import Interpreter, InterpreterSettings
from voicebot.edge.stt import SttResult
from voicebot.edge.turn import MODES, letters
from voicebot.edge.turn_model import SmartTurnModel
from voicebot.edge.vad import VadSettings
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import QOS_AT_MOST_ONCE, ControlMessage, Topics, TranscriptMessage, encode

FRAME_MS = 30
ROOM_NOISE_DBFS = -60.0

#: A clause that sounds finished, and the rest of the same question.
FINISHED_THEN_MORE = [
    ("네 알겠어요.", "그런데 내일은 어때요?"), ("오늘 날씨 좋네요.", "우산은 필요 없을까요?"),
    ("고마워요.", "그리고 내일 일정도 알려 주세요."), ("음악 좀 틀어 줘.", "조용한 걸로요."),
    ("불 꺼 줘.", "거실 불만요."), ("지금 몇 시예요?", "서울 시간으로요."),
    ("배고파요.", "근처 식당 좀 추천해 주세요."), ("알람 맞춰 줘.", "내일 아침 일곱 시에요."),
    ("좋아요.", "그럼 그걸로 해 주세요."), ("그거 맞아요.", "그런데 하나 더 물어봐도 돼요?"),
    ("피곤해요.", "잠이 잘 오는 음악 틀어 줄래요?"), ("내일 비 온대요.", "우산 챙겨야 할까요?"),
    ("주말에 시간 있어요.", "뭐 하면 좋을까요?"), ("아니요.", "그게 아니라 내일 날씨요."),
    ("괜찮아요.", "다른 노래로 바꿔 주세요."), ("오늘 회의 있어요.", "몇 시였는지 알려 줘요."),
    ("추워요.", "난방 좀 켜 줄래요?"), ("네 그래요.", "그러면 거기로 가는 길 알려 주세요."),
    ("재미있네요.", "하나 더 얘기해 줘요."), ("알겠어.", "근데 그건 언제 끝나?"),
]
#: A clause that ends in a connective (or an auxiliary still to come), and the rest.
CONNECTIVE_THEN_MORE = [
    ("오늘 날씨가 좋은데", "산책 갈까요?"), ("내일 아침에", "일곱 시에 깨워 줘."), ("음악을 틀어", "줄래요?"),
    ("서울 말고", "부산 날씨 알려 줘."), ("우산을 챙겨야", "할까요?"), ("배가 고파서", "뭐 좀 먹고 싶어요."),
    ("주말에는", "뭐 하면 좋을까요?"), ("그리고", "내일 일정도 알려 주세요."), ("거실 불을 끄고", "안방 불은 켜 줘."),
    ("비가 오면", "알려 줄래요?"), ("점심 먹고 나서", "산책 가도 될까요?"), ("지금 가면", "늦을까요?"),
    ("친구랑 영화 보려고 하는데", "추천해 줘요."), ("그 노래 찾아", "봐 줄래?"), ("아니", "그게 아니라 다른 거요."),
    ("근데", "내일은 어때요?"), ("저녁에", "뭐 먹을까요?"), ("날씨가 추우니까", "따뜻하게 입어야겠죠?"),
    ("회의가 끝나면", "알려 주세요."), ("이번 주 토요일에", "비 와요?"),
]
#: Ten short pauses (the target set) and ten long ones, for each half.
PAUSES_MS = [250, 290, 330, 370, 410, 450, 490, 530, 570, 600, 700, 850, 1000, 1150, 1300, 1450, 1600, 1750, 1900,
             2000]


@dataclass
class Question:
    first: str
    second: str
    pause_ms: int
    kind: str  # "finished" | "connective"
    frames: list[bytes] = field(default_factory=list)
    words: list[tuple[str, float]] = field(default_factory=list)  # each word and when its sound ends (s)
    speech_s: float = 0.0

    @property
    def text(self) -> str:
        return f"{self.first} {self.second}"


def build(first: str, second: str, pause_ms: int, kind: str) -> Question:
    """The question as audio (clause, pause, clause), each word timed in proportion within its clause."""
    a, b = speech(first), speech(second)
    gap = np.zeros(16 * pause_ms, dtype=np.int16)
    audio = np.concatenate([a, gap, b])
    step = 16 * FRAME_MS
    audio = np.concatenate([audio, np.zeros(-len(audio) % step, dtype=np.int16)])
    q = Question(first, second, pause_ms, kind, [audio[i:i + step].tobytes() for i in range(0, len(audio), step)])
    starts = (0.0, (len(a) + len(gap)) / 16_000)
    for (text, clip), start in zip(((first, a), (second, b)), starts, strict=True):
        words = text.split()
        q.words += [(w, start + len(clip) / 16_000 * (i + 1) / len(words)) for i, w in enumerate(words)]
    q.speech_s = (len(a) + len(gap) + len(b)) / 16_000
    return q


def questions() -> list[Question]:
    out = [build(a, b, p, "finished") for (a, b), p in zip(FINISHED_THEN_MORE, PAUSES_MS, strict=True)]
    return out + [build(a, b, p, "connective") for (a, b), p in zip(CONNECTIVE_THEN_MORE, PAUSES_MS, strict=True)]


class Lane:
    """One device's microphone: what is being said, how much of it has been delivered, where the recognizer's last
    stream stopped (a new stream starts after it: the pre-roll re-sends audio, not words)."""

    def __init__(self) -> None:
        self.current: Question | None = None
        self.heard_s = 0.0
        self.last_stream_end = 0.0
        self.pending: asyncio.Queue[Question] = asyncio.Queue()
        self.spoken = asyncio.Event()
        self.speech_end = 0.0
        self.rng = np.random.default_rng(7)
        self.description = "turn-set microphone"

    async def frames(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        silence = [bytes(2 * 16 * FRAME_MS)]
        warmup = 1000 // FRAME_MS  # the room before anyone speaks (the VAD learns its floor)
        while True:
            q = None
            frames = silence
            if warmup:
                warmup -= 1
            elif not self.pending.empty():
                q = self.pending.get_nowait()
                self.current, self.heard_s, self.last_stream_end = q, 0.0, 0.0
                frames = q.frames
            for i, frame in enumerate(frames):
                next_at += FRAME_MS / 1000
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                if q is not None:
                    self.heard_s = (i + 1) * FRAME_MS / 1000
                samples = np.frombuffer(frame, "<i2") + self.rng.normal(0, 32768 * 10 ** (ROOM_NOISE_DBFS / 20), 480)
                yield np.clip(samples, -32768, 32767).astype("<i2").tobytes()
            if q is not None:
                self.speech_end = time.monotonic() - (len(q.frames) * FRAME_MS / 1000 - q.speech_s)
                self.spoken.set()


class TimedRecognizer:
    """Shows each word once its sound has ended and ``lag_s`` more has passed; the final result ``final_s`` after
    the stream ends, with every word the stream heard."""

    name = "timed-synthetic"

    def __init__(self, lane: Lane, lag_s: float, *, every_s: float = 0.15, final_s: float = 0.3) -> None:
        self.lane, self.lag_s, self.every_s, self.final_s = lane, lag_s, every_s, final_s

    async def open(self) -> TimedSession:
        return TimedSession(self)


class TimedSession:
    def __init__(self, r: TimedRecognizer) -> None:
        self.r = r
        lane = r.lane
        self.question = lane.current
        # the stream starts with the pre-roll (300 ms) and the VAD's start (120 ms): words that ended before, and
        # before where the last stream stopped, are not this stream's
        self.since = max(lane.last_stream_end, lane.heard_s - 0.42)
        self.shown = ""
        self.queue: asyncio.Queue[SttResult | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.ticker = self.loop.call_later(r.every_s, self._tick)

    def _said(self) -> str:
        if self.question is None:
            return ""
        heard = self.r.lane.heard_s
        return " ".join(w for w, end in self.question.words if self.since < end <= heard)

    def _tick(self) -> None:
        text = self._said()
        if text and text != self.shown:
            self.shown = text
            self.loop.call_later(self.r.lag_s, self.queue.put_nowait, SttResult(text, final=False))
        self.ticker = self.loop.call_later(self.r.every_s, self._tick)

    async def send(self, pcm: bytes) -> None:
        pass

    async def finish(self) -> None:
        self.ticker.cancel()
        text = self._said()
        self.r.lane.last_stream_end = self.r.lane.heard_s
        self.loop.call_later(self.r.final_s, self.queue.put_nowait, SttResult(text, final=True))
        self.loop.call_later(self.r.final_s, self.queue.put_nowait, None)

    async def results(self) -> AsyncIterator[SttResult]:
        while (item := await self.queue.get()) is not None:
            yield item

    async def close(self) -> None:
        self.ticker.cancel()


@dataclass
class Outcome:
    question: Question
    premature: bool = False
    withdrawn: int = 0
    half_answered: bool = False
    lost: bool = False
    barged_in: bool = False


async def run_lane(stack: Stack, mode: str, lag_ms: int, label: str, items: list[Question],
                   model: SmartTurnModel, *, full_duplex: bool = False) -> list[Outcome]:
    lane = Lane()
    thing = f"set-{label}"
    topics = Topics(ROOT, thing)
    device = Device(stack.broker.url, thing, stack.observations)
    await device.start()
    transport = Mqtt5Transport(ConnectionSettings(broker=stack.broker.url), client_id=f"bench-interpreter-{thing}")
    sent: list[tuple[float, TranscriptMessage]] = []

    def on_transcript(message: TranscriptMessage) -> None:
        if message.state == "completed":
            device.expect(thing, message.request_id, message.text)
            sent.append((time.monotonic(), message))

    interpreter = Interpreter(transport, topics, lane, TimedRecognizer(lane, lag_ms / 1000),
                              InterpreterSettings(vad=VadSettings(end_of_turn=mode),
                                                  barge_in=BargeInSettings(enabled=full_duplex)),
                              on_transcript=on_transcript,
                              turn_model=model)
    stop = asyncio.Event()
    task = asyncio.create_task(interpreter.run(stop))
    outcomes: list[Outcome] = []
    try:
        for q in items:
            sent.clear()
            lane.spoken.clear()
            barge_ins = interpreter.barge_ins
            await lane.pending.put(q)
            await asyncio.wait_for(lane.spoken.wait(), 30)
            whole = letters(q.text)

            def asked_whole(whole: str = whole) -> str | None:
                replaced = {m.replaces for _, m in sent if m.replaces}
                return next((m.request_id for _, m in sent if letters(m.text) == whole
                             and m.request_id not in replaced), None)

            deadline = time.monotonic() + 6.0  # the whole question's answer starts within this, or it never does
            while time.monotonic() < deadline:
                rid = asked_whole()
                if rid and device.started[rid].is_set():
                    break
                await asyncio.sleep(0.05)
            outcome = Outcome(q)
            replaced = {m.replaces for _, m in sent if m.replaces}
            outcome.premature = any(at < lane.speech_end for at, _ in sent)
            outcome.withdrawn = sum(1 for _, m in sent if m.request_id in replaced)
            outcome.half_answered = any(device.started[m.request_id].is_set() for _, m in sent
                                        if letters(q.second) not in letters(m.text))
            outcome.lost = asked_whole() is None
            outcome.barged_in = interpreter.barge_ins > barge_ins
            outcomes.append(outcome)
            await asyncio.sleep(1.0)  # (what is still on its way for this question)
            for rid in {m.request_id for _, m in sent} | {device.player.queue.active_request} - {None}:
                transport.publish(topics.control, encode(ControlMessage(action="cancel", request_id=rid)),
                                  QOS_AT_MOST_ONCE)  # enough: the next question
            for _ in range(200):  # the next question is asked to a device that has stopped speaking
                if device.player.state != "speaking" and not interpreter.muted():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
    finally:
        stop.set()
        await task
        await device.close()
        transport.close()
    return outcomes


def report(outcomes: list[Outcome]) -> dict[str, Any]:
    def rates(items: list[Outcome]) -> dict[str, Any]:
        n = len(items)
        return {"questions": n, "premature": sum(o.premature for o in items),
                "withdrawn": sum(o.withdrawn for o in items), "half_answered": sum(o.half_answered for o in items),
                "barged_in": sum(o.barged_in for o in items),
                "lost": sum(o.lost for o in items),
                "half_answered_pct": round(100 * sum(o.half_answered for o in items) / n, 1) if n else None}

    short = [o for o in outcomes if o.question.pause_ms <= 600]
    return {"all": rates(outcomes), "pause_250_600": rates(short),
            "pause_700_2000": rates([o for o in outcomes if o.question.pause_ms > 600]),
            "finished_clause": rates([o for o in outcomes if o.question.kind == "finished"]),
            "connective": rates([o for o in outcomes if o.question.kind == "connective"]),
            "failures": [{"question": o.question.text, "pause_ms": o.question.pause_ms, "half_answered":
                          o.half_answered, "lost": o.lost} for o in outcomes if o.half_answered or o.lost]}


def measure(stack: Stack, *, lags_ms: tuple[int, ...], lanes: int = 5, limit: int = 0,
            modes: tuple[str, ...] = MODES, full_duplex: bool = False) -> dict[str, Any]:
    """Every question through each way to end a turn, for each lag: the four modes at once, ``lanes`` devices
    each."""
    items = questions()
    if limit:
        items = items[::max(1, len(items) // limit)][:limit]
    model = SmartTurnModel()
    result: dict[str, Any] = {}
    for lag in lags_ms:
        async def sweep(lag: int = lag) -> list[list[Outcome]]:
            jobs = [run_lane(stack, mode, lag, f"{mode}-{lag}-{i}", items[i::lanes], model, full_duplex=full_duplex)
                    for mode in modes for i in range(lanes)]
            return await asyncio.gather(*jobs)

        runs = asyncio.run(sweep())
        result[str(lag)] = {mode: report([o for r in runs[m * lanes:(m + 1) * lanes] for o in r])
                            for m, mode in enumerate(modes)}
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["turn-taking set: questions with premature / withdrawn / half answered / lost (of 40; "
             "half answered in the 250-600 ms pauses, of 20)"]
    for lag, modes in result.items():
        for mode, r in modes.items():
            a, s = r["all"], r["pause_250_600"]
            lines.append(f"  lag {lag:>4} ms  {mode:<9} {a['premature']:>3} / {a['withdrawn']:>3} / "
                         f"{a['half_answered']:>3} / {a['lost']:>3}   short pauses: half answered "
                         f"{s['half_answered']} ({s['half_answered_pct']} %), lost {s['lost']}"
                         + (f"   barged in {a['barged_in']}" if a.get("barged_in") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voicebot.bench.turnset", description=__doc__.split("\n\n")[0])
    p.add_argument("--lags", default="0,500", help="recognizer partial lags, comma-separated ms")
    p.add_argument("--lanes", type=int, default=5, help="devices per mode at once")
    p.add_argument("--limit", type=int, default=0, help="only this many questions (0: all 40)")
    p.add_argument("--modes", default=",".join(MODES), help="ways to end a turn, comma-separated")
    p.add_argument("--full-duplex", action="store_true", help="barge-in on: the player's far end reaches the "
                   "interpreter, and speech over an answer stops it")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    stack = start_stack(BackendSettings(), workers=64)
    try:
        result = measure(stack, lags_ms=tuple(int(v) for v in args.lags.split(",")), lanes=args.lanes,
                         limit=args.limit, modes=tuple(args.modes.split(",")), full_duplex=args.full_duplex)
    finally:
        stack.close()
    print(table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
