"""Footprint of the device components as separate processes (RSS, CPU), what the VAD keeps away from the speech
recognizer on a long input, and the real local backends (espeak-ng, Vosk)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicebot.bench.synthetic import ANSWER
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import QOS_AT_LEAST_ONCE, Topics, encode, new_request_id, split_audio
from voicebot.sentences import split_sentences

RATE = 16_000
UTTERANCES = ["오늘 날씨 어때요", "음악 좀 틀어 줘", "내일 아침 일곱 시에 깨워 줘"]


def espeak_samples(text: str) -> np.ndarray:
    import io

    import soundfile as sf

    from voicebot.cloud.tts import EspeakTts

    data = EspeakTts().synthesize(text).data
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def long_input(path: Path, *, minutes: float = 10.0, seed: int = 1) -> float:
    """``minutes`` of quiet room noise (about -50 dBFS) with three short spoken questions; returns speech seconds."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * RATE)
    audio = (rng.normal(0, 0.003, total)).astype(np.float32)
    speech = 0.0
    for k, text in enumerate(UTTERANCES):
        words = espeak_samples(text)
        at = int(total * (k + 1) / (len(UTTERANCES) + 1))
        audio[at : at + len(words)] += words
        speech += len(words) / RATE
    sf.write(path, audio, RATE, subtype="PCM_16")
    return speech


@dataclass
class ProcessUse:
    rss_mb: float
    cpu_s: float
    wall_s: float
    stderr: str


def _run(cmd: list[str], *, until_ready: threading.Event | None = None, drive=None, timeout: float = 300) -> ProcessUse:
    """Run a component; when ``drive`` is given, call it once the component is up, then stop it with SIGTERM."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    # Peak RSS of the component itself: VmHWM of its own address space. (ru_maxrss from wait4 would also count the
    # forked copy of this benchmark process before exec.)
    peak = [0]
    done = threading.Event()

    def watch_rss() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, ValueError):
                return
            done.wait(0.05)  # sampling interval of the measurement, not a synchronisation

    watcher = threading.Thread(target=watch_rss, daemon=True)
    watcher.start()
    if drive is not None:
        if until_ready is not None and not until_ready.wait(60):
            proc.kill()
            raise RuntimeError(f"{cmd[3]} did not come up")
        drive()
        proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    watcher.join(5)
    return ProcessUse(peak[0] / 1024, usage.ru_utime + usage.ru_stime, time.monotonic() - start, "".join(err_lines))


def interpreter_footprint(broker_url: str, wav: Path, stt: str, end_of_turn: str | None = None) -> dict[str, float]:
    """One interpreter process over the WAV input: peak RSS, CPU per second of audio. ``end_of_turn``: text keeps
    the audio turn model (Smart Turn v3) out; the default loads it."""
    cmd = [sys.executable, "-m", "voicebot.cli", "interpreter", "--broker", broker_url, "--topic-root", "benchfp",
           "--thing", f"fp-{stt}-{end_of_turn or 'default'}", "--source", f"wav:{wav}", "--stt", stt]
    if end_of_turn:
        cmd += ["--end-of-turn", end_of_turn]
    use = _run(cmd)
    m = re.search(r"interpreter: (\d+) utterances; ([\d.]+) s of ([\d.]+) s heard", use.stderr)
    if not m:
        raise RuntimeError(f"interpreter run failed: {use.stderr[-500:]}")
    heard = float(m.group(3))
    return {"rss_mb": round(use.rss_mb, 1), "cpu_s": round(use.cpu_s, 2), "utterances": int(m.group(1)),
            "stt_seconds": float(m.group(2)), "input_seconds": heard,
            "cpu_percent_realtime": round(100 * use.cpu_s / heard, 2)}


def player_footprint(broker_url: str) -> dict[str, float]:
    topics = Topics("benchfp", "fp-player")
    ready, played = threading.Event(), threading.Event()
    rid = new_request_id()
    watcher = Mqtt5Transport(ConnectionSettings(broker=broker_url), client_id="bench-fp-watch")

    def on_message(topic: str, payload: bytes) -> None:
        if topic == topics.player_state:
            ready.set()
        elif rid.encode() in payload and b'"played"' in payload and b'"seq"' not in payload:
            played.set()

    watcher.subscribe(topics.player_state, 0, on_message)
    watcher.subscribe(topics.event, 1, on_message)

    def drive() -> None:
        parts = split_sentences(ANSWER)
        for seq, text in enumerate(parts):
            pcm = (np.sin(np.arange(int(RATE * 0.06 * len(text))) / 8) * 3000).astype("<i2").tobytes()
            for m in split_audio(request_id=rid, seq=seq, last=seq == len(parts) - 1, text=text, audio=pcm,
                                 format="pcm_s16le", sample_rate=RATE):
                watcher.publish(topics.audio, encode(m), QOS_AT_LEAST_ONCE).result(10)
        played.wait(120)

    cmd = [sys.executable, "-m", "voicebot.cli", "player", "--broker", broker_url, "--topic-root", "benchfp",
           "--thing", "fp-player", "--sink", "null"]
    try:
        use = _run(cmd, until_ready=ready, drive=drive)
    finally:
        watcher.close()
    return {"rss_mb": round(use.rss_mb, 1), "cpu_s": round(use.cpu_s, 2), "wall_s": round(use.wall_s, 2),
            "played": played.is_set()}


def real_backends() -> dict[str, float]:
    """espeak-ng milliseconds per sentence and Vosk's real-time factor on the same Korean speech."""
    import asyncio

    from voicebot.cloud.tts import EspeakTts
    from voicebot.edge.stt import VoskBackend

    tts = EspeakTts()
    sentences = split_sentences(ANSWER)
    start = time.perf_counter()
    for s in sentences:
        tts.synthesize(s)
    espeak_ms = (time.perf_counter() - start) * 1000 / len(sentences)

    t = time.perf_counter()
    vosk = VoskBackend()
    load_s = time.perf_counter() - t
    audio = np.concatenate([espeak_samples(u) for u in UTTERANCES])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()

    async def recognise() -> float:
        session = await vosk.open()
        t0 = time.perf_counter()
        for i in range(0, len(pcm), 960):
            await session.send(pcm[i : i + 960])
        await session.finish()
        async for _ in session.results():
            pass
        await session.close()
        return time.perf_counter() - t0

    spent = asyncio.run(recognise())
    return {"espeak_ms_per_sentence": round(espeak_ms, 1), "vosk_rtf": round(spent / (len(audio) / RATE), 3),
            "vosk_load_s": round(load_s, 2)}


def measure(broker_url: str, *, minutes: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="voicebot-bench-") as tmp:
        wav = Path(tmp) / "long.wav"
        speech_s = long_input(wav, minutes=minutes)
        vosk = interpreter_footprint(broker_url, wav, "vosk")
        vad_only = interpreter_footprint(broker_url, wav, "none")
        no_model = interpreter_footprint(broker_url, wav, "none", "text")
    return {"interpreter_vosk": vosk, "interpreter_transcribe_shaped": vad_only,
            "interpreter_transcribe_shaped_without_turn_model": no_model, "player": player_footprint(broker_url),
            "long_input": {"minutes": minutes, "speech_seconds": round(speech_s, 2)},
            "real_backends": real_backends()}
