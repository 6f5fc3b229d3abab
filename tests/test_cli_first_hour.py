"""The first hour of a new user, with real processes: every ordinary mistake is one line naming the flag and what is
allowed, exit code 2, within 5 s, no traceback; help shows every default; the README's dev mode finishes a turn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Recorder
from tests.speech_fixtures import silence, spoken, write_wav
from voicebot.local.broker import free_port

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`

NO_BROKER = f"mqtt://127.0.0.1:{free_port()}"
NO_AWS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "",
          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": ""}


def voicebot(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in {**os.environ, **env}.items() if v}
    return subprocess.run([sys.executable, "-m", "voicebot.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=environment)


def blocking_file(tmp_path: Path) -> str:
    (tmp_path / "afile").write_text("x")
    return f"wav:{tmp_path / 'afile' / 'out.wav'}"


BAD = [
    # (the command line, what the one line must name)
    (["player", "--broker", NO_BROKER, "--thing", "a/b"], "--thing"),
    (["player", "--broker", NO_BROKER, "--thing", "pi#1"], "--thing"),
    (["player", "--broker", NO_BROKER, "--thing", "pi+1"], "--thing"),
    (["player", "--broker", NO_BROKER, "--thing", ""], "--thing"),
    (["interpreter", "--broker", NO_BROKER, "--thing", "my pi"], "--thing"),
    (["demo", "--text", "안녕", "--thing", "a/b"], "--thing"),
    (["player", "--broker", NO_BROKER, "--volume", "5"], "--volume"),
    (["player", "--broker", NO_BROKER, "--volume", "loud"], "--volume"),
    (["player", "--broker", NO_BROKER, "--gap-timeout", "-1"], "--gap-timeout"),
    (["interpreter", "--broker", NO_BROKER, "--early-end-ms", "-5"], "--early-end-ms"),
    (["interpreter", "--broker", NO_BROKER, "--hangover-ms", "50"], "--hangover-ms"),
    (["interpreter", "--broker", NO_BROKER, "--topic-root", "a/b"], "--topic-root"),
    (["player", "--broker", NO_BROKER, "--sink", "BLOCKED"], "wav sink"),
    (["demo", "--text", "안녕", "--llm", "llamacpp"], "--llm llamacpp"),
    (["interpreter", "--broker", NO_BROKER, "--stt", "transcribe", "--source", "wav:/nonexistent.wav"],
     "credentials"),
]


@pytest.mark.parametrize(("argv", "names"), BAD, ids=[" ".join(a[1:] if a[0] != "player" else a)[:60] for a, _ in BAD])
def test_an_ordinary_mistake_is_one_clear_line(argv, names, tmp_path):
    argv = [blocking_file(tmp_path) if a == "BLOCKED" else a for a in argv]
    started = time.monotonic()
    proc = voicebot(*argv, "--out" if argv[0] == "demo" else "-v", *([str(tmp_path)] if argv[0] == "demo" else []),
                    **NO_AWS)
    took = time.monotonic() - started
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line
             and " DEBUG " not in line]
    assert proc.returncode == 2, proc.stderr
    assert took < 5, f"{took:.1f} s"
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and names in lines[0], proc.stderr


def test_an_unknown_flag_shows_the_subcommands_usage_and_v_works_after_it():
    proc = voicebot("player", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: voicebot player") and "unrecognized arguments: --bogus" in proc.stderr
    ok = voicebot("device-policy", "--thing", "pi-1", "--region", "ap-northeast-2", "--account", "123456789012", "-v")
    assert ok.returncode == 0 and '"Version"' in ok.stdout


@pytest.mark.parametrize("command", ["player", "interpreter", "demo", "cloud", "monitor", "console", "deployment",
                                     "bench"])
def test_help_describes_every_flag_and_shows_its_default(command):
    proc = voicebot(command, "--help")
    assert proc.returncode == 0
    import argparse

    from voicebot.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings[0]} has no description"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in (sub.formatter_class(command)._get_help_string(action)), action.option_strings
    assert "(default:" in proc.stdout


def test_the_readme_dev_mode_finishes_a_spoken_turn(tmp_path, connect):
    """mosquitto, `voicebot cloud`, `voicebot player` and `voicebot interpreter` as the README writes them."""
    from voicebot.local.broker import MosquittoBroker

    question = write_wav(tmp_path / "question.wav", silence(0.5), spoken("오늘 날씨 어때요"), silence(1.5))
    with MosquittoBroker() as broker:
        events = Recorder()
        connect_to = broker.url
        from voicebot.messaging import ConnectionSettings, Mqtt5Transport

        observer = Mqtt5Transport(ConnectionSettings(broker=connect_to), client_id="readme-observer")
        observer.subscribe("voicebot/#", 1, events)
        env = {k: v for k, v in {**os.environ, **NO_AWS}.items() if v}
        cloud = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "cloud", "--broker", connect_to, "--llm",
                                  "loopback", "--history", str(tmp_path / "h.sqlite")], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        player = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "player", "--broker", connect_to, "--thing",
                                   "my-pi", "--sink", f"wav:{tmp_path / 'reply.wav'}"], stderr=subprocess.PIPE,
                                  text=True, env=env)
        try:
            assert "voicebot cloud ready" in cloud.stdout.readline()  # one ready line
            events.wait_for(lambda ms: any(t == "voicebot/local/my-pi/player" for t, _ in ms), 30)  # player up
            interpreter = subprocess.run([sys.executable, "-m", "voicebot.cli", "interpreter", "--broker", connect_to,
                                          "--thing", "my-pi", "--source", f"wav:{question}", "--realtime"],
                                         capture_output=True, text=True, timeout=120, env=env)
            assert interpreter.returncode == 0, interpreter.stderr[-2000:]
            assert "speech recognition: vosk (no AWS credentials found" in interpreter.stderr
            events.wait_for(lambda ms: any(t == "voicebot/my-pi/event" and b'"played"' in p and b'"seq"' not in p
                                           for t, p in ms), 60)
            kinds = [t.rsplit("/", 1)[-1] for t, _ in events.messages]
            assert {"transcript", "answer", "audio", "event"} <= set(kinds)
            assert any(t == "voicebot/my-pi/transcript" and b'"proceeding"' in p for t, p in events.messages)
        finally:
            for proc in (player, cloud):
                proc.send_signal(2)
                proc.wait(10)
            observer.close()
        assert cloud.returncode == 0 and player.returncode == 0
