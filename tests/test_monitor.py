"""The monitor reads like a conversation: the player's heartbeat once per change, multi-part audio with its seconds of
speech, partial transcripts marked so a terminal can update them in place; `--thing` watches one device."""

from __future__ import annotations

import subprocess
import sys

from voicebot.cloud.tts import EspeakTts
from voicebot.monitor import MonitorFormatter
from voicebot.protocol import QOS_AT_LEAST_ONCE, Topics, TranscriptMessage, encode, new_request_id, split_audio


def test_heartbeats_collapse_and_multi_part_audio_shows_its_length():
    formatter = MonitorFormatter(clock=lambda: 100.0)
    t = Topics("voicebot", "pi-1")
    rid = new_request_id()
    speaking = b'{"v":1,"ts":1,"state":"speaking","requestId":"%s"}' % rid.encode()
    heard = [formatter.lines(t.player_state, speaking) for _ in range(5)]
    assert [len(lines) for lines in heard] == [1, 0, 0, 0, 0]  # the 2 s heartbeat is said once
    assert len(formatter.lines(t.player_state, b'{"v":1,"ts":2,"state":"idle"}')) == 1

    wav = EspeakTts().synthesize("오늘은 맑고 따뜻한 하루가 될 거예요. 저녁에는 조금 쌀쌀해요.")
    parts = split_audio(request_id=rid, seq=0, last=True, text="오늘은", audio=wav.data, format="wav",
                        sample_rate=16_000, limit=20_000)
    assert len(parts) > 1
    lines = [line for p in parts for line in formatter.lines(t.audio, encode(p))]
    seconds = (len(wav.data) - 44) / 2 / 16_000
    assert f"= {seconds:.2f} s of speech" in lines[-1] and all("s of speech" not in line for line in lines[:-1])

    partial = TranscriptMessage(request_id=rid, state="proceeding", text="오늘")
    formatter.lines(t.transcript, encode(partial))
    assert formatter.partial
    formatter.lines(t.transcript, encode(partial.model_copy(update={"state": "completed"})))
    assert not formatter.partial


def test_monitor_thing_watches_one_device(broker, connect):
    proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "monitor", "--broker", broker.url, "--thing",
                             "pi-a", "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching voicebot/pi-a/# and voicebot/local/pi-a/#" in proc.stderr.readline()
        assert proc.stderr.readline().strip() == "ready"
        cloud = connect("cloud")
        for thing, text in (("pi-b", "다른 기기"), ("pi-a", "첫째"), ("pi-b", "또 다른"), ("pi-a", "둘째")):
            message = TranscriptMessage(request_id=new_request_id(), state="completed", text=text)
            cloud.publish(Topics("voicebot", thing).transcript, encode(message), QOS_AT_LEAST_ONCE).result(5)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("pi-a" in line for line in lines)  # piped: plain lines, one device
    assert "첫째" in lines[0] and "둘째" in lines[1]
