import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicebot.protocol import (
    MAX_TRANSCRIPT_CHARS,
    AnswerMessage,
    AudioAssembler,
    AudioMessage,
    ChatEvent,
    CommandMessage,
    ControlMessage,
    EventMessage,
    PlayerStateMessage,
    ProtocolError,
    Topics,
    TranscriptMessage,
    all_things_filter,
    decode,
    encode,
    is_device_local,
    is_newer,
    new_request_id,
    parse_topic,
    split_audio,
    topic_matches,
)

EXAMPLES = [
    TranscriptMessage(request_id="r1", state="proceeding", text="오늘 날씨"),
    TranscriptMessage(request_id="r1", state="completed", text="오늘 날씨 어때?", speech_end_ts=1_700_000_000_000),
    AnswerMessage(request_id="r1", seq=0, text="맑고 따뜻합니다.", last=False),
    AnswerMessage(request_id="r1", seq=3, text="", last=True),
    AudioMessage(request_id="r1", seq=1, last=True, part=0, parts=2, format="ogg_vorbis", sample_rate=24000,
                 text="안녕", audio=base64.b64encode(b"abc").decode()),
    EventMessage(source="player", type="skipped", request_id="r1", seq=2, detail="gap timeout"),
    PlayerStateMessage(state="speaking", request_id="r1"),
    ControlMessage(action="cancel", request_id="r1"),
    CommandMessage(action="volume", value=0.5),
    CommandMessage(action="cancel"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_model_round_trips(message):
    data = encode(message)
    assert decode(type(message), data) == message
    obj = json.loads(data)
    assert obj["v"] == 1 and isinstance(obj["ts"], int)


def test_korean_is_not_escaped_and_names_are_camel_case():
    data = encode(TranscriptMessage(request_id="r", state="completed", text="안녕하세요", speech_end_ts=5))
    assert "안녕하세요".encode() in data
    assert b"\\u" not in data
    assert set(json.loads(data)) >= {"requestId", "speechEndTs"}


def test_topics_for_every_kind():
    t = Topics("voicebot", "pi-1")
    assert t.transcript == "voicebot/pi-1/transcript"
    assert t.answer == "voicebot/pi-1/answer"
    assert t.audio == "voicebot/pi-1/audio"
    assert t.event == "voicebot/pi-1/event"
    assert t.command == "voicebot/pi-1/command"
    assert t.player_state == "voicebot/local/pi-1/player"
    assert t.control == "voicebot/local/pi-1/control"
    assert is_device_local(t.control) and not is_device_local(t.audio)
    assert parse_topic(t.audio).thing == "pi-1" and parse_topic(t.player_state).thing == "pi-1"
    assert topic_matches(all_things_filter("voicebot", "transcript"), t.transcript)
    assert not topic_matches(all_things_filter("voicebot", "transcript"), t.answer)


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "$aws"])
def test_topic_segments_are_checked(bad):
    with pytest.raises(ProtocolError, match="thing"):
        Topics("voicebot", bad)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"{not json", ""),
        (b"[1, 2]", ""),
        (b"\xff\xfe", ""),
        (json.dumps({"v": 2, "requestId": "r", "state": "completed", "text": "x"}).encode(), "v"),
        (json.dumps({"requestId": "r", "state": "completed", "text": "x"}).encode(), "v"),
        (json.dumps({"v": 1, "requestId": 5, "state": "completed", "text": "x"}).encode(), "requestId"),
        (json.dumps({"v": 1, "requestId": "r", "state": "done", "text": "x"}).encode(), "state"),
        (json.dumps({"v": 1, "requestId": "r", "state": "completed"}).encode(), "text"),
        (json.dumps({"v": 1, "requestId": "r", "state": "completed", "text": "가" * (MAX_TRANSCRIPT_CHARS + 1)},
                    ensure_ascii=False).encode(), "text"),
    ],
)
def test_decode_errors_name_the_field(payload, field):
    with pytest.raises(ProtocolError) as err:
        decode(TranscriptMessage, payload)
    assert err.value.field == field
    assert str(err.value)


def test_oversize_payload_is_refused_before_parsing():
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        decode(TranscriptMessage, b"{" + b" " * 200 + b"}", limit=100)


def test_answer_text_empty_only_when_last():
    with pytest.raises(ProtocolError, match="text"):
        decode(AnswerMessage, {"v": 1, "requestId": "r", "seq": 0, "text": " ", "last": False})
    assert decode(AnswerMessage, {"v": 1, "requestId": "r", "seq": 0, "text": "", "last": True}).last


def test_volume_command_needs_a_value_in_range():
    with pytest.raises(ProtocolError):
        decode(CommandMessage, {"v": 1, "action": "volume"})
    with pytest.raises(ProtocolError, match="value"):
        decode(CommandMessage, {"v": 1, "action": "volume", "value": 1.5})


def test_chat_event_carries_thing():
    event = decode(ChatEvent, {"v": 1, "ts": 1, "requestId": "r", "state": "completed", "text": "네", "thing": "pi"})
    assert event.thing == "pi"


def test_request_ids_sort_by_time():
    ids = [new_request_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(len(i) == 36 and i[14] == "7" for i in ids)  # UUIDv7 layout
    assert ids == sorted(ids)  # strictly increasing, even within one millisecond
    assert all(is_newer(b, a) for a, b in zip(ids, ids[1:], strict=False))
    assert is_newer("b", None)
    assert not is_newer(ids[0], ids[-1])
    assert is_newer("console-test", ids[0]) and is_newer(ids[0], "console-test")  # no order: arrival decides
    assert not is_newer(ids[0], ids[0])


@given(audio=st.binary(max_size=40_000), limit=st.integers(min_value=2_000, max_value=20_000),
       order=st.randoms(use_true_random=False), dup=st.integers(min_value=0, max_value=3))
def test_split_audio_reassembles_bit_exactly_in_any_order(audio, limit, order, dup):
    messages = split_audio(request_id="r", seq=4, last=True, text="한 문장입니다.", audio=audio,
                           format="ogg_vorbis", sample_rate=24000, limit=limit)
    assert all(len(encode(m, limit=limit)) <= limit for m in messages)
    shuffled = messages + messages[:dup]
    order.shuffle(shuffled)
    assembler = AudioAssembler()
    done = [s for m in shuffled if (s := assembler.add(decode(AudioMessage, encode(m)))) is not None]
    assert len(done) == 1
    assert done[0].data == audio and done[0].last and done[0].seq == 4


def test_split_audio_makes_several_parts_under_the_default_limit():
    audio = bytes(range(256)) * 1000  # 256 kB
    messages = split_audio(request_id="r", seq=0, last=False, text="긴 문장", audio=audio, format="wav",
                           sample_rate=16000)
    assert len(messages) >= 4
    assert [m.part for m in messages] == list(range(len(messages)))
    assert all(m.parts == len(messages) and len(encode(m)) <= 100_000 for m in messages)
