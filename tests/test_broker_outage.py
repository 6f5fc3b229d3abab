"""Outages in the middle of an answer, with real sockets: the device's own link drops for two seconds (the broker
keeps its session and queues the sentences meanwhile: nothing is lost), and the broker itself restarts (the device
gives up the interrupted answer, listens again, and plays the next one in full)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import Recorder
from tests.test_player import audio
from voicebot.edge.audio import WavSink
from voicebot.edge.player import Player, PlayerSettings
from voicebot.local.broker import MosquittoBroker, free_port
from voicebot.messaging import ConnectionSettings, Mqtt5Transport
from voicebot.protocol import QOS_AT_LEAST_ONCE, Topics, encode, new_request_id

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`

TOPICS = Topics("voicebot", "outage-pi")


class Link:
    """A TCP relay between the device and the broker that can be cut (a Wi-Fi drop): ``cut()`` closes every
    connection and refuses new ones until ``restore()``."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.up = threading.Event()
        self.up.set()
        self.sockets: list[socket.socket] = []
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up.clear()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.server.close()


def play_through(tmp_path, device_url: str, cloud: Mqtt5Transport, script: Callable) -> tuple[np.ndarray, Recorder]:
    events = Recorder()
    cloud.subscribe(TOPICS.event, 1, events)
    sink = WavSink(tmp_path / "played.wav")
    device = Mqtt5Transport(ConnectionSettings(broker=device_url), client_id=f"voicebot-player-{TOPICS.thing}")

    async def main() -> None:
        player = Player(device, TOPICS, sink, PlayerSettings(gap_timeout_s=20))
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)
        await asyncio.to_thread(script, device, events, player)
        stop.set()
        await task

    asyncio.run(main())
    sink.close()
    device.close()
    played, _ = sf.read(tmp_path / "played.wav", dtype="int16")
    return played, events


def publish(cloud: Mqtt5Transport, rid: str, seqs, last_seq: int) -> None:
    for seq in seqs:
        for m in audio(rid, seq, last=seq == last_seq, level=100 * (seq + 1), seconds=0.2):
            cloud.publish(TOPICS.audio, encode(m), QOS_AT_LEAST_ONCE).result(30)


def played_event(rid: str, seq: int | None = None):
    key = b'"seq":%d' % seq if seq is not None else None

    def done(ms) -> bool:
        return any(b'"played"' in p and rid.encode() in p and (key in p if key else b'"seq"' not in p)
                   for _, p in ms)

    return done


def test_a_two_second_drop_of_the_device_link_loses_no_sentence(tmp_path):
    rid = new_request_id()
    with MosquittoBroker() as broker:
        link = Link(broker.port)
        cloud = Mqtt5Transport(ConnectionSettings(broker=broker.url), client_id="outage-cloud")

        def script(device: Mqtt5Transport, events: Recorder, player: Player) -> None:
            publish(cloud, rid, (0, 1), 3)
            events.wait_for(played_event(rid, 1), 10)
            link.cut()  # the device is offline; the broker keeps its session
            publish(cloud, rid, (2, 3), 3)  # the rest of the answer is written meanwhile
            threading.Timer(2.0, link.restore).start()  # two seconds later the Wi-Fi is back
            events.wait_for(played_event(rid), 60)

        played, _ = play_through(tmp_path, f"mqtt://127.0.0.1:{link.port}", cloud, script)
        cloud.close()
        link.close()
    assert list(np.unique(played)) == [100, 200, 300, 400] and len(played) == 4 * 3200


@pytest.mark.parametrize("down_s", [2.0, 20.0])
def test_a_broker_restart_mid_answer_leaves_the_device_listening_and_the_next_answer_whole(tmp_path, down_s):
    first, second = new_request_id(), new_request_id()
    with MosquittoBroker() as broker:
        cloud = Mqtt5Transport(ConnectionSettings(broker=broker.url), client_id="outage-cloud")
        states = Recorder()

        def script(device: Mqtt5Transport, events: Recorder, player: Player) -> None:
            device.subscribe(TOPICS.player_state, 0, states)
            publish(cloud, first, (0, 1), 3)
            events.wait_for(played_event(first, 1), 10)
            broker.restart(down_s)  # sentences 2 and 3 of the first answer are lost in the outage
            # Back within 5 s of the broker's return, even after 20 s away: the backoff to a local broker is capped.
            assert device.wait_for_connections(2, 5.0) and cloud.wait_for_connections(2, 5.0)
            publish(cloud, second, (0, 1), 1)  # the next question's answer
            events.wait_for(played_event(second), 60)

        played, events = play_through(tmp_path, broker.url, cloud, script)
        cloud.close()
    levels = [int(v) for v in np.unique(played)]
    assert levels == [100, 200] and len(played) == 4 * 3200  # first answer's 0 and 1, then the whole second answer
    assert states.messages and b'"idle"' in states.messages[-1][1]  # listening again
