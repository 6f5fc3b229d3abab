"""`voicebot demo --json` as a user runs it: a separate process, its own broker, a WAV file at the end."""

from __future__ import annotations

import json
import subprocess
import sys

import soundfile as sf


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicebot.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_demo_text_json(tmp_path):
    proc = run_cli("demo", "--text", "안녕하세요, 오늘 기분 어때요?", "--out", str(tmp_path), "--json", "--llm", "loopback")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["transcript"] == "안녕하세요, 오늘 기분 어때요?"
    assert len(summary["sentences"]) >= 2
    assert summary["backends"]["llm"].startswith("loopback") and summary["backends"]["tts"] == "espeak-ng"
    t = summary["timings_ms"]
    assert 0 < t["first_sentence"] <= t["first_audio"] <= t["total"]
    info = sf.info(summary["audio_path"])
    assert info.samplerate == 16000 and info.frames > 16000
    assert abs(info.frames / 16000 - summary["audio_seconds"]) < 0.05
    assert "you: 안녕하세요" in proc.stderr  # human-readable progress goes to stderr with --json


def test_demo_needs_text_or_audio():
    proc = run_cli("demo", "--text", "   ", "--llm", "loopback")
    assert proc.returncode == 1
    assert "nothing to ask" in proc.stderr
