"""A person always hears something: when the cloud cannot answer, the player says a built-in Korean clip, once per
turn and never over answer audio. The rules (``ApologyWatch``) are pure; the last test runs the local stack with a
speech service that fails on every sentence."""

from __future__ import annotations

import asyncio
import json

import soundfile as sf

from tests.conftest import Recorder
from tests.test_player import audio
from voicebot.cloud.history import SqliteHistory
from voicebot.cloud.llm import LoopbackChatModel
from voicebot.cloud.tts import TtsError
from voicebot.edge.apology import ApologyWatch
from voicebot.edge.audio import WavSink
from voicebot.edge.clips import CLIPS, load_clips
from voicebot.edge.playback import Play, PlaybackQueue
from voicebot.edge.player import Player, PlayerSettings
from voicebot.local.cloud import LocalCloud
from voicebot.protocol import (
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    ControlMessage,
    TranscriptMessage,
    encode,
    new_request_id,
    now_ms,
)


def test_no_answer_at_all_gives_one_clip_after_the_bound():
    watch, rid = ApologyWatch(no_answer_s=10, error_wait_s=2), new_request_id()
    watch.expect(rid, 100.0)
    assert watch.wake_at() == 110.0 and watch.due(109.9) is None
    assert watch.due(110.0) == "trouble"
    assert watch.due(200.0) is None and watch.wake_at() is None  # once per turn


def test_an_answer_or_any_event_from_the_cloud_means_it_is_alive():
    watch, rid = ApologyWatch(), new_request_id()
    watch.expect(rid, 0.0)
    watch.audio(rid, 1.0)
    assert watch.due(60.0) is None
    other = new_request_id()
    watch.expect(other, 0.0)
    watch.heard_of(other, 0.5)  # e.g. a "skipped" event
    assert watch.due(60.0) is None


def test_an_error_without_apology_audio_gives_a_clip_and_audio_in_time_does_not():
    watch, rid = ApologyWatch(error_wait_s=2), new_request_id()
    watch.expect(rid, 0.0)
    watch.error(rid, 1.0)
    assert watch.wake_at() == 3.0 and watch.due(2.9) is None and watch.due(3.0) == "trouble"
    spoken = new_request_id()
    watch.error(spoken, 10.0)
    watch.audio(spoken, 10.5)  # the chat's own apology arrived as sound
    assert watch.due(20.0) is None


def test_a_withdrawn_request_an_older_one_and_a_disabled_watch_stay_quiet():
    older, rid = new_request_id(), new_request_id()
    watch = ApologyWatch()
    watch.expect(rid, 0.0)
    watch.error(older, 0.0)  # an error about an older request does not replace the newest one's watch
    assert watch.request_id == rid
    watch.forget(rid)  # the person went on: the early request was cancelled
    assert watch.due(100.0) is None
    off = ApologyWatch(enabled=False)
    off.expect(rid, 0.0)
    assert off.due(100.0) is None and off.wake_at() is None


def test_the_recognizer_failing_or_the_device_offline_is_said_at_once():
    watch, rid = ApologyWatch(), new_request_id()
    watch.failed(rid, 0.0)
    assert watch.due(0.0) == "trouble"
    offline = new_request_id()
    watch.expect(offline, 5.0, offline=True)
    assert watch.due(5.0) == "offline"


def test_a_player_that_joins_mid_answer_starts_with_the_first_sentence_it_gets():
    """A restarted player never receives the sentences sent before it subscribed: waiting the gap timeout for them
    only delays the rest. An answer that begins after the player started still waits for a late seq 0."""
    before = new_request_id()  # made 5 s before a restarted player subscribed
    queue = PlaybackQueue(gap_timeout_s=3.0, joined_at=now_ms() + 5_000)
    for message in audio(before, 2):
        queue.add(message, 0.0)
    actions = queue.next(0.0)
    assert [type(a) for a in actions] == [Play] and actions[0].sentence.seq == 2
    after = new_request_id()  # made just before the player started (the demo asks, then starts its player)
    fresh = PlaybackQueue(gap_timeout_s=3.0, joined_at=now_ms() + 500)
    for message in audio(after, 1):
        fresh.add(message, 0.0)
    assert fresh.next(0.0) == [] and fresh.wake_at() == 3.0  # seq 0 may still come (out of order)


class SpeechServiceDown:
    """Polly failing for every sentence, the chat's spoken apology included."""

    name = "down"

    def synthesize(self, text: str):
        raise TtsError("Polly: ServiceUnavailableException")


def test_polly_failing_for_every_sentence_the_person_hears_the_local_clip_once(broker, connect, topics, tmp_path):
    clips = load_clips(tmp_path / "clips")  # rendered once with espeak-ng, as the build does
    assert set(clips) == set(CLIPS)
    events, sink = Recorder(), WavSink(tmp_path / "played.wav")
    states = Recorder()
    observer = connect("observer")
    observer.subscribe(topics.event, 1, events)
    observer.subscribe(topics.player_state, 0, states)  # (the microphone is muted while the clip plays)
    device = connect("device")
    rid = new_request_id()
    settings = PlayerSettings(error_wait_s=2.0)

    async def main() -> Player:
        player = Player(connect("player"), topics, sink, settings, clips=clips)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 10)

        def speak() -> None:  # what the interpreter sends at the end of a question
            device.publish(topics.transcript, encode(TranscriptMessage(
                request_id=rid, state="completed", text="오늘 날씨 어때요", lang="ko-KR", speech_end_ts=now_ms())),
                QOS_AT_LEAST_ONCE).result(5)
            device.publish(topics.control, encode(ControlMessage(action="expect", request_id=rid)),
                           QOS_AT_MOST_ONCE).result(5)
            events.wait_for(lambda ms: any(b'"apology"' in p for _, p in ms), 15)
            events.wait_for(lambda ms: sum(b'"source":"speech"' in p for _, p in ms) >= 2, 15)
            events.wait_for(lambda ms: any(b'"trouble clip"' in p for _, p in ms), 15)  # played out

        await asyncio.to_thread(speak)
        stop.set()
        await task
        return player

    with LocalCloud(broker.url, model=LoopbackChatModel(), history=SqliteHistory(tmp_path / "h.sqlite"),
                    tts=SpeechServiceDown(), topic_root=topics.root):
        player = asyncio.run(main())
    sink.close()
    said = [json.loads(p) for t, p in events.messages]
    apologies = [e for e in said if e["type"] == "apology"]
    assert len(apologies) == 1 and apologies[0]["requestId"] == rid and apologies[0]["detail"] == "trouble"
    first_error = min(at for at, e in player.timeline if e.type == "skipped")
    clip_at = next(at for at, e in player.timeline if e.type == "apology")
    assert settings.error_wait_s <= clip_at - first_error < settings.error_wait_s + 2.0  # within the bound
    played, rate = sf.read(tmp_path / "played.wav", dtype="int16")
    clip, _ = sf.read(tmp_path / "clips" / "trouble.wav", dtype="int16")
    assert len(played) == len(clip) > rate  # the whole clip, once, and nothing else
    # The interpreter was told: muted while the clip played, then listening again.
    states.wait_for(lambda ms: [json.loads(p)["state"] for _, p in ms][-2:] == ["speaking", "idle"], 10)



def test_a_question_asked_while_the_device_is_offline_gets_the_offline_clip_at_once(tmp_path):
    """Under Greengrass, IPC works offline, so the player asks the network itself: a TCP connection to the nucleus's
    IoT data endpoint. Refused -> the offline clip, without waiting for the no-answer bound."""
    from unittest.mock import Mock, create_autospec

    import numpy as np
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
    from awsiot.greengrasscoreipc.model import GetConfigurationResponse

    from tests.test_greengrass import done_future
    from voicebot.cloud.tts import pcm_to_wav
    from voicebot.edge.audio import NullSink
    from voicebot.local.broker import free_port
    from voicebot.messaging import IpcTransport
    from voicebot.protocol import Topics

    closed_port = free_port()  # nothing listens there: the internet is down

    def configuration(component_name=None, key_path=None):
        value = {"iotDataEndpoint": "127.0.0.1"} if key_path[-1] == "iotDataEndpoint" else {"port": closed_port}
        return GetConfigurationResponse(component_name=component_name, value=value)

    ipc = create_autospec(GreengrassCoreIPCClientV2, instance=True)
    ipc.publish_to_iot_core_async.return_value = done_future()
    ipc.publish_to_topic_async.return_value = done_future()
    ipc.subscribe_to_iot_core.return_value = (None, Mock(spec=["close"]))
    ipc.subscribe_to_topic.return_value = (None, Mock(spec=["close"]))
    ipc.get_configuration.side_effect = configuration
    topics = Topics("voicebot", "offline-pi")
    clip = pcm_to_wav(np.full(1600, 900, dtype=np.int16), 16_000)
    rid = new_request_id()

    async def main() -> Player:
        said = asyncio.Event()
        player = Player(IpcTransport(ipc), topics, NullSink(realtime=False), clips={"offline": clip, "trouble": clip},
                        on_event=lambda e: said.set() if e.type == "played" and e.detail == "offline clip" else None)
        task = asyncio.create_task(player.run(stop := asyncio.Event()))
        await asyncio.wait_for(player.ready.wait(), 5)
        control = ipc.subscribe_to_topic.call_args.kwargs["on_stream_event"]
        from awsiot.greengrasscoreipc.model import BinaryMessage, MessageContext, SubscriptionResponseMessage

        control(SubscriptionResponseMessage(binary_message=BinaryMessage(
            message=encode(ControlMessage(action="expect", request_id=rid)),
            context=MessageContext(topic=topics.control))))
        await asyncio.wait_for(said.wait(), 5)  # well before the 10 s no-answer bound
        stop.set()
        await task
        return player

    player = asyncio.run(main())
    apologies = [e for e in player.events if e.type == "apology"]
    assert [(e.request_id, e.detail) for e in apologies] == [(rid, "offline")]
    asked = {tuple(c.kwargs["key_path"]) for c in ipc.get_configuration.call_args_list}
    assert asked == {("configuration", "iotDataEndpoint"), ("configuration", "mqtt", "port")}


def test_a_question_that_gets_nothing_back_is_answered_by_the_clip_once():
    """The cloud is unreachable or the Lambda died: no audio, no event. After the bound the device says so, once."""
    from voicebot.edge.audio import NullSink
    from voicebot.messaging import MemoryTransport
    from voicebot.protocol import Topics

    transport, topics = MemoryTransport(), Topics("voicebot", "lonely-pi")
    clip = bytes(WAV_CLIP)
    rid = new_request_id()

    async def main() -> Player:
        said = asyncio.Event()
        player = Player(transport, topics, NullSink(realtime=False), PlayerSettings(no_answer_s=0.3),
                        clips={"trouble": clip, "offline": clip},
                        on_event=lambda e: said.set() if e.type == "played" and e.detail == "trouble clip" else None)
        task = asyncio.create_task(player.run(stop := asyncio.Event()))
        await asyncio.wait_for(player.ready.wait(), 5)
        transport.deliver(topics.control, encode(ControlMessage(action="expect", request_id=rid)))
        await asyncio.wait_for(said.wait(), 5)
        transport.deliver(topics.control, encode(ControlMessage(action="expect", request_id=rid)))  # (again: once)
        stop.set()
        await task
        return player

    player = asyncio.run(main())
    assert [(e.request_id, e.detail) for e in player.events if e.type == "apology"] == [(rid, "trouble")]


def _wav_clip() -> bytes:
    import numpy as np

    from voicebot.cloud.tts import pcm_to_wav

    return pcm_to_wav(np.full(1600, 900, dtype=np.int16), 16_000)


WAV_CLIP = _wav_clip()
