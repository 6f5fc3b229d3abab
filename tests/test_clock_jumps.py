""""Newer wins" when the device's clock is minutes off and when NTP sets it right (a Raspberry Pi has no clock
battery). The device's ids are made with a skewed clock; the cloud's stores and the player use the real one."""

from __future__ import annotations

import pytest

from tests.test_chat_once import Collect, dynamo_history, event  # noqa: F401 - a fixture
from voicebot import request_ids
from voicebot.cloud.chat import ChatDeps, answer_transcript
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.edge.playback import Interrupted, PlaybackQueue
from voicebot.protocol import AudioMessage, split_audio

MINUTE = 60_000


class DeviceClock:
    """The device's wall clock, ``offset_ms`` off (ids are made with it); the process restarts on demand."""

    def __init__(self, monkeypatch, state_path) -> None:
        self.monkeypatch, self.state_path, self.offset_ms = monkeypatch, state_path, 0
        real = request_ids.now_ms
        monkeypatch.setattr(request_ids, "now_ms", lambda: real() + self.offset_ms)
        self.restart()

    def restart(self) -> None:
        """A new interpreter process: nothing in memory, the state file on disk."""
        self.monkeypatch.setattr(request_ids, "_id_last", (0, 0))
        self.monkeypatch.setattr(request_ids, "_state_mark", 0)
        self.monkeypatch.setattr(request_ids, "_state_path", None)
        if self.state_path is not None:
            request_ids.keep_request_ids_in(self.state_path)

    def new_id(self) -> str:
        return request_ids.new_request_id()


@pytest.fixture(params=["sqlite", "dynamo"])
def chat(request, tmp_path, connect):
    history = SqliteHistory(tmp_path / "h.sqlite") if request.param == "sqlite" \
        else request.getfixturevalue("dynamo_history")
    return ChatDeps(model=LoopbackChatModel(answer="네, 들었어요."), history=history, publisher=Collect(connect("cloud")))


def ask(chat: ChatDeps, request_id: str):
    outcome = answer_transcript(event("pi-1", "질문이에요", request_id), chat)
    assert outcome is not None
    return outcome


def test_a_fast_clock_set_right_by_ntp_still_has_its_next_question_answered(chat, monkeypatch, tmp_path):
    device = DeviceClock(monkeypatch, tmp_path / "request-ids")
    device.offset_ms = 5 * MINUTE  # booted 5 minutes fast
    assert ask(chat, device.new_id()).error is None
    device.offset_ms = 0  # NTP sets the clock right
    assert ask(chat, device.new_id()).error is None  # was "arrived after a newer request; not answered"
    device.restart()  # and again after the interpreter restarts, from the mark kept on disk
    assert ask(chat, device.new_id()).error is None
    device.offset_ms = -20 * MINUTE  # and after a jump back far beyond the mark's margin
    later = device.new_id()
    assert ask(chat, later).error is None and chat.publisher.answers(later)[-1]["last"] is True


def test_a_late_older_question_of_a_device_ten_minutes_fast_is_not_answered(chat, monkeypatch, tmp_path):
    device = DeviceClock(monkeypatch, tmp_path / "request-ids")
    device.offset_ms = 10 * MINUTE
    older, newer = device.new_id(), device.new_id()
    assert ask(chat, newer).error is None
    late = ask(chat, older)  # delivered late, out of order: its ids were taken as "untimed" and answered
    assert late.error == "superseded" and not chat.publisher.answers(older)
    assert chat.history.latest_request("pi-1") == newer


def test_a_device_that_lost_its_state_after_running_fast_is_heard_again(chat, monkeypatch):
    device = DeviceClock(monkeypatch, None)  # no state file (a reinstalled component)
    device.offset_ms = 30 * MINUTE
    assert ask(chat, device.new_id()).error is None
    device.offset_ms = 0
    device.restart()
    assert ask(chat, device.new_id()).error is None  # its order restarted: the plausible id wins


def test_the_player_follows_the_same_order(monkeypatch, tmp_path):
    device = DeviceClock(monkeypatch, tmp_path / "request-ids")
    device.offset_ms = 5 * MINUTE
    first = device.new_id()
    device.offset_ms = 0
    second = device.new_id()
    queue = PlaybackQueue()

    def parts(rid: str) -> list[AudioMessage]:
        return split_audio(request_id=rid, seq=0, last=True, text="네", audio=b"\0\0" * 160, format="pcm_s16le",
                           sample_rate=16_000)

    for message in parts(first):
        queue.add(message, 0.0)
    actions = [a for m in parts(second) for a in queue.add(m, 1.0)]
    assert actions == [Interrupted(first, "superseded")] and queue.active_request == second
