"""The local rules engine runs the template's rule SQL against a real mosquitto."""

from __future__ import annotations

import threading

import pytest

from voicebot.local.cloud import default_template
from voicebot.local.rules import RulesEngine, RuleSqlError, load_rules, parse_rule_sql
from voicebot.protocol import QOS_AT_LEAST_ONCE, TranscriptMessage, encode


def test_template_rules_parse_with_the_topic_root():
    rules = {r.name: r for r in load_rules(default_template(), topic_root="myroot")}
    assert set(rules) == {"ChatRule", "SpeechRule"}
    chat = rules["ChatRule"]
    assert chat.query.topic_filter == "myroot/+/transcript"
    assert chat.targets == ("ChatFunction",)
    assert rules["SpeechRule"].query.topic_filter == "myroot/+/answer"


def test_select_star_adds_thing_from_the_topic_and_overrides_the_payload():
    q = parse_rule_sql("SELECT *, topic(2) AS thing FROM 'voicebot/+/transcript' WHERE state = 'completed'")
    payload = {"state": "completed", "text": "안녕", "thing": "someone-else"}
    assert q.matches("voicebot/pi-1/transcript", payload)
    assert q.select("voicebot/pi-1/transcript", payload) == {"state": "completed", "text": "안녕", "thing": "pi-1"}
    assert not q.matches("voicebot/pi-1/transcript", {"state": "proceeding"})
    assert not q.matches("voicebot/pi-1/transcript", {"text": "no state"})
    assert not q.matches("voicebot/pi-1/answer", payload)


@pytest.mark.parametrize(
    ("where", "payload", "expected"),
    [
        ("a = 'x' AND b = 1", {"a": "x", "b": 1}, True),
        ("a = 'x' AND b = 1", {"a": "x", "b": 2}, False),
        ("a = 'x' OR b = 1", {"a": "y", "b": 1}, True),
        ("(a = 'x' OR a = 'y') AND c <> 'z'", {"a": "y", "c": "w"}, True),
        ("(a = 'x' OR a = 'y') AND c <> 'z'", {"a": "y", "c": "z"}, False),
        ("last = true", {"last": True}, True),
        ("last = true", {"last": 1}, False),
        ("n.x = 'k'", {"n": {"x": "k"}}, True),
        ("a = 'it''s'", {"a": "it's"}, True),
    ],
)
def test_where_and_or_of_equalities(where, payload, expected):
    assert parse_rule_sql(f"SELECT * FROM 't/#' WHERE {where}").where(payload) is expected


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELECT *, upper(text) AS t FROM 'a/+'", "upper"),
        ("SELECT * FROM 'a/+' WHERE n > 3", "n"),
        ("SELECT * FROM 'a/+' WHERE a LIKE 'x'", "a"),
        ("SELECT * FROM 'a/+' GROUP BY a", "GROUP"),
        ("DELETE FROM 'a'", "SELECT"),
    ],
)
def test_sql_outside_the_subset_fails_naming_it(sql, named):
    with pytest.raises(RuleSqlError, match=named):
        parse_rule_sql(sql)


def test_rules_engine_fires_chat_once_for_completed_and_never_for_proceeding(connect, topics):
    calls: list[dict] = []
    chat_called = threading.Event()

    def chat(event):
        calls.append(event)
        chat_called.set()

    rules = load_rules(default_template(), topic_root=topics.root)
    engine = RulesEngine(connect("rules"), rules, {"ChatFunction": chat, "SpeechFunction": lambda e: None}).start()
    device = connect("device")
    for text in ("오늘", "오늘 날씨"):
        device.publish(topics.transcript, encode(TranscriptMessage(request_id="r1", state="proceeding", text=text)),
                       QOS_AT_LEAST_ONCE).result(5)
    device.publish(topics.transcript, encode(TranscriptMessage(request_id="r1", state="completed", text="오늘 날씨 어때")),
                   QOS_AT_LEAST_ONCE).result(5)
    assert chat_called.wait(10)
    # A second completed message for another request proves the engine has processed everything before it.
    done2 = threading.Event()
    engine.handlers = {**engine.handlers, "ChatFunction": lambda e: (calls.append(e), done2.set())}
    device.publish(topics.transcript, encode(TranscriptMessage(request_id="r2", state="completed", text="고마워")),
                   QOS_AT_LEAST_ONCE).result(5)
    assert done2.wait(10)
    engine.close()
    assert [c["requestId"] for c in calls] == ["r1", "r2"]
    assert calls[0]["thing"] == topics.thing and calls[0]["text"] == "오늘 날씨 어때"
    assert [t for t, _ in engine.invocations] == ["ChatFunction", "ChatFunction"]


def test_non_json_payload_fires_nothing_and_engine_keeps_serving(connect, topics, caplog):
    fired = threading.Event()
    rules = load_rules(default_template(), topic_root=topics.root)
    engine = RulesEngine(connect("rules"), rules,
                         {"ChatFunction": lambda e: fired.set(), "SpeechFunction": lambda e: None}).start()
    device = connect("device")
    device.publish(topics.transcript, b"{oops", QOS_AT_LEAST_ONCE).result(5)
    device.publish(topics.transcript, encode(TranscriptMessage(request_id="r", state="completed", text="네 좋아요")),
                   QOS_AT_LEAST_ONCE).result(5)
    assert fired.wait(10)
    engine.close()
    assert len(engine.invocations) == 1
    assert "not JSON" in caplog.text


def test_missing_handler_is_reported_at_start(connect):
    rules = load_rules(default_template(), topic_root="voicebot")
    with pytest.raises(RuleSqlError, match="SpeechFunction"):
        RulesEngine(connect("rules"), rules, {"ChatFunction": lambda e: None})


def test_mqtt_sockets_have_nagle_off(broker, connect):
    """Audio parts are over 4 KB: with Nagle on, each waited ~40 ms for a delayed ACK on the local broker."""
    import socket

    import psutil

    connect("nagle")
    checked = 0
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.fd >= 0 and conn.raddr and conn.raddr.port == broker.port:
            with socket.socket(fileno=__import__("os").dup(conn.fd)) as sock:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                checked += 1
    assert checked >= 1
