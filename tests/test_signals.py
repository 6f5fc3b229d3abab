"""Every command stops on Ctrl-C (SIGINT) and SIGTERM within 2 s, whatever it is doing: the broker unreachable,
connecting to a broker that never answers, playing, mid-utterance, and the demo mid-turn. Real processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Recorder
from tests.speech_fixtures import silence, spoken, write_wav
from voicebot.local.broker import free_port
from voicebot.protocol import QOS_AT_LEAST_ONCE, Topics, encode, new_request_id, split_audio

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`

STOP_WITHIN_S = 2.0
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])


class Command:
    """``voicebot ...`` as a user starts it, its log lines read as they come."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", "")}
        env = {k: v for k, v in env.items() if v}
        self.proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)

    def wait_line(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if text in self.lines.get(timeout=left):
                    return
            except queue.Empty:
                break
        self.proc.kill()
        raise AssertionError(f"no line with {text!r} within {timeout} s: {''.join(self.log)[-2000:]}")

    def stop(self, sig: int) -> float:
        """Send ``sig``; how long the process took to exit (it is killed after 10 s)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float("inf")
        return time.monotonic() - started


def assert_stops(command: Command, sig: int) -> None:
    took = command.stop(sig)
    assert took <= STOP_WITHIN_S, f"{signal.Signals(sig).name}: still running after {took:.1f} s:\n" + \
        "".join(command.log)[-2000:]
    assert "Traceback" not in "".join(command.log), "".join(command.log)[-2000:]


@SIGNALS
@pytest.mark.parametrize("component", ["player", "interpreter"])
def test_a_component_whose_broker_is_unreachable_stops_at_once(component, sig, tmp_path):
    extra = ["--sink", "null"] if component == "player" else ["--source", f"wav:{write_wav(tmp_path / 'q.wav', silence(5))}",
                                                              "--stt", "none"]
    command = Command(component, "--broker", f"mqtt://127.0.0.1:{free_port()}", "--thing", "sig-pi", *extra)
    command.wait_line("cannot reach")
    assert_stops(command, sig)


class SilentBroker:
    """Accepts TCP connections and never answers (a broker that hangs during CONNECT)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"mqtt://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@SIGNALS
def test_a_player_connecting_to_a_broker_that_never_answers_stops_at_once(sig):
    broker = SilentBroker()
    try:
        command = Command("player", "--broker", broker.url, "--thing", "sig-pi", "--sink", "null")
        command.wait_line("connecting to")
        assert_stops(command, sig)
    finally:
        broker.close()


def publish_long_answer(connect: Callable, topics: Topics, seconds: float) -> str:
    rid = new_request_id()
    pcm = (np.sin(np.arange(int(16_000 * seconds)) / 8) * 3000).astype("<i2").tobytes()
    cloud = connect("cloud")
    for message in split_audio(request_id=rid, seq=0, last=True, text="긴 대답", audio=pcm, format="pcm_s16le",
                               sample_rate=16_000):
        cloud.publish(topics.audio, encode(message), QOS_AT_LEAST_ONCE).result(10)
    return rid


@SIGNALS
def test_a_player_stops_mid_sentence(broker, connect, topics, tmp_path, sig):
    events = Recorder()
    connect("observer").subscribe(topics.event, 1, events)
    command = Command("player", "--broker", broker.url, "--thing", topics.thing, "--sink",
                      f"wav:{tmp_path / 'played.wav'}", "--realtime")
    command.wait_line("player ready")
    publish_long_answer(connect, topics, 20.0)
    events.wait_for(lambda ms: any(b'"playing"' in p for _, p in ms), 30)
    assert_stops(command, sig)
    assert command.proc.returncode == 0  # stopped as asked, not killed


@SIGNALS
def test_an_interpreter_stops_mid_utterance(broker, connect, topics, tmp_path, sig):
    said = Recorder()
    connect("observer").subscribe(topics.transcript, 1, said)
    wav = write_wav(tmp_path / "question.wav", silence(0.3), *[spoken("오늘 서울 날씨가 어때요") for _ in range(8)])
    command = Command("interpreter", "--broker", broker.url, "--thing", topics.thing, "--source", f"wav:{wav}",
                      "--realtime", "--stt", "vosk")
    said.wait_for(lambda ms: any(json.loads(p)["state"] == "proceeding" for _, p in ms), 60)  # mid-utterance
    assert_stops(command, sig)


@SIGNALS
def test_the_demo_stops_mid_turn(tmp_path, sig):
    command = Command("demo", "--text", "안녕하세요, 오늘 서울 날씨는 어때요?", "--out", str(tmp_path), "--llm", "loopback",
                      "--json")  # (progress on stderr)
    command.wait_line("you: ")
    assert_stops(command, sig)
    assert not Path(tmp_path / "history.sqlite-journal").exists()


def test_the_same_thing_name_twice_the_first_one_says_so_and_exits(broker, topics):
    """Two players for one thing would throw each other off the broker for ever: the one taken over says so in one
    line and exits with the component's "cannot go on" code (Greengrass would show it ERRORED)."""
    first = Command("player", "--broker", broker.url, "--thing", topics.thing, "--sink", "null")
    first.wait_line("player ready")
    second = Command("player", "--broker", broker.url, "--thing", topics.thing, "--sink", "null")
    try:
        first.proc.wait(30)
        assert first.proc.returncode == 4
        log = "".join(first.log)
        assert log.count("session taken over") == 1 and "same thing name running twice" in log
        assert second.proc.poll() is None  # the newer one goes on
    finally:
        assert_stops(second, signal.SIGINT)
