"""The MQTT5 transport against a real mosquitto that goes away and comes back."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import Recorder
from voicebot.local.broker import MosquittoBroker, free_port
from voicebot.messaging import ConnectionSettings, Mqtt5Transport, Outbox, handoff_to_loop


def test_reconnect_resubscribes_and_sends_what_was_queued_while_down():
    port = free_port()
    broker = MosquittoBroker(port=port).start()
    settings = ConnectionSettings(broker=broker.url)
    device, cloud = Mqtt5Transport(settings, client_id="rc-device"), Mqtt5Transport(settings, client_id="rc-cloud")
    received = Recorder()
    cloud.subscribe("voicebot/pi/transcript", 1, received)
    try:
        device.publish("voicebot/pi/transcript", b"before", 1).result(5)
        received.wait_for(lambda ms: len(ms) == 1, 10)
        broker.stop()  # the broker goes away (no persistence: every session is lost)
        queued = device.publish("voicebot/pi/transcript", b"while down", 1)  # waits in the offline queue
        broker = MosquittoBroker(port=port).start()
        queued.result(30)  # sent from the offline queue and acknowledged by the new broker once reconnected
        # The subscriber's session died with the broker: it must have subscribed again by itself. (Whether
        # "while down" reached it depends on which client reconnected first, so probe with fresh messages.)
        for attempt in range(60):
            probe = f"probe {attempt}".encode()
            device.publish("voicebot/pi/transcript", probe, 1).result(5)
            try:
                received.wait_for(lambda ms, probe=probe: any(p == probe for _, p in ms), 0.5)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("the subscription never came back after the broker restarted")
    finally:
        device.close()
        cloud.close()
        broker.stop()


def test_outbox_bounds_what_waits_for_the_connection(caplog):
    class StuckTransport:
        def __init__(self) -> None:
            self.sent = 0

        def publish(self, topic, payload, qos):
            from concurrent.futures import Future

            self.sent += 1
            return Future()  # never acknowledged: the connection is down

    transport = StuckTransport()
    outbox = Outbox(transport, "interpreter", max_pending=3)
    for _ in range(5):
        outbox.send("voicebot/pi/transcript", b"{}", 1)
    assert transport.sent == 3 and outbox.pending == 3 and outbox.dropped == 2
    assert "waiting for the connection" in caplog.text

    async def drain() -> None:
        await outbox.drain(0.05)  # gives up after the timeout instead of hanging a shutdown

    asyncio.run(drain())


@pytest.mark.slow  # a real process or real timeouts
def test_the_same_client_id_twice_stops_the_older_client_instead_of_a_reconnect_fight(broker, caplog):
    """Two processes with one thing name: MQTT5 tells the first that its session was taken over. It says so in one
    line and stops, instead of reconnecting and throwing the other one out in turn, for ever."""
    import threading

    settings = ConnectionSettings(broker=broker.url)
    first = Mqtt5Transport(settings, client_id="voicebot-player-twice")
    lost: list[str] = []
    told = threading.Event()
    first.on_lost(lambda reason: (lost.append(reason), told.set()))
    second = Mqtt5Transport(settings, client_id="voicebot-player-twice")
    try:
        assert told.wait(10), "the first client was never told"
        assert first.taken_over and not first.connected and "same thing name" in lost[0]
        # The second keeps its connection from now on: it is not thrown out again by a reconnecting first client.
        assert not second.wait_for_disconnections(second.disconnections + 1, 3.0) and second.connected
        assert caplog.text.count("session taken over") == 1
    finally:
        first.close()
        second.close()


def test_a_message_arriving_after_its_components_loop_stopped_is_dropped_without_an_error(caplog):
    """A component shutting down: its loop has closed while the MQTT client's thread still delivers. The message has
    nobody left to go to; it is dropped quietly, not logged as a failed handler with a traceback."""
    loop = asyncio.new_event_loop()
    handler = handoff_to_loop(loop, asyncio.Queue())
    loop.close()
    with caplog.at_level(logging.DEBUG, logger="voicebot.messaging"):
        handler("voicebot/local/dev1/control", b"{}")  # (raised RuntimeError: Event loop is closed)
    assert "after its loop stopped" in caplog.text
