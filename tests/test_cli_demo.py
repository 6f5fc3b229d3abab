"""`voicebot demo --json` as a user runs it: a separate process, its own broker, a WAV file at the end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`


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


def test_demo_audio_json_hears_the_wav_through_vosk(tmp_path):
    from tests.speech_fixtures import silence, spoken, write_wav

    wav = write_wav(tmp_path / "question.wav", silence(0.5), spoken("오늘 날씨 어때요"), silence(1.5))
    proc = run_cli("demo", "--audio", str(wav), "--out", str(tmp_path / "out"), "--json", "--llm", "loopback")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["backends"]["stt"].startswith("vosk")
    assert summary["transcript"]  # synthetic speech: the words may be off, but something was heard
    assert summary["sentences"] and summary["audio_seconds"] > 1.0
    assert summary["transcript"] in " ".join(summary["sentences"])  # the offline responder repeats what it heard


def test_interpreter_command_with_a_wav_source_ends_when_the_file_is_done(tmp_path, broker):
    from tests.speech_fixtures import silence, spoken, write_wav

    wav = write_wav(tmp_path / "q.wav", silence(0.3), spoken("음악 틀어 줘"), silence(1.0),
                    spoken("고마워요"), silence(1.0))
    proc = run_cli("interpreter", "--broker", broker.url, "--thing", "cli-pi", "--source", f"wav:{wav}", "--stt", "vosk")
    assert proc.returncode == 0, proc.stderr
    heard = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert len(heard) == 2 and heard[0]["requestId"] < heard[1]["requestId"]


def test_interpreter_command_names_missing_connection_and_bad_source(broker):
    assert "give --broker" in run_cli("interpreter", "--source", "wav:/nope.wav").stderr
    proc = run_cli("interpreter", "--broker", broker.url, "--source", "wav:/nope.wav")
    assert proc.returncode == 2 and "no such audio file" in proc.stderr


def test_demo_audio_with_only_silence_says_so(tmp_path):
    from tests.speech_fixtures import silence, write_wav

    wav = write_wav(tmp_path / "quiet.wav", silence(2.0))
    proc = run_cli("demo", "--audio", str(wav), "--out", str(tmp_path / "out"), "--llm", "loopback")
    assert proc.returncode == 1
    assert f"no speech was recognised in {wav}" in proc.stderr
