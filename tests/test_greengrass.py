"""Greengrass packaging: gdk-config.json and built recipes against the GDK schemas, a lifecycle run of a built
component against a real mosquitto, the IPC transport and live configuration against a GreengrassCoreIPCClientV2-spec
fake, and the monitor."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import zipfile
from concurrent.futures import Future
from pathlib import Path
from unittest.mock import Mock, create_autospec

import jsonschema
import pytest
import yaml
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import (
    QOS,
    BinaryMessage,
    ConfigurationUpdateEvent,
    ConfigurationUpdateEvents,
    GetConfigurationResponse,
    IoTCoreMessage,
    MessageContext,
    MQTTMessage,
    SubscriptionResponseMessage,
)

from voicebot import gg_build
from voicebot.edge.audio import NullSink
from voicebot.edge.greengrass import ComponentConfig
from voicebot.edge.player import Player
from voicebot.messaging import IpcTransport
from voicebot.monitor import MonitorFormatter
from voicebot.protocol import (
    AnswerMessage,
    EventMessage,
    Topics,
    TranscriptMessage,
    encode,
    split_audio,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "greengrass"
needs_schemas = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/greengrass (the GDK schemas) is not beside "
                                                               "this checkout")
COMPONENT_DIRS = [ROOT / "components" / "voice-interpreter", ROOT / "components" / "voice-player", ROOT]


@pytest.fixture(scope="module")
def built():
    """What `make gg-build` does."""
    assert gg_build.main([str(d) for d in COMPONENT_DIRS]) == 0
    return {gg_build.read_gdk_config(d)[0]: d / "greengrass-build" for d in COMPONENT_DIRS}


def built_recipe(tree: Path, name: str) -> dict:
    """The built recipe, under the name GDK publishes it by (the file recipe.yaml links to)."""
    return yaml.safe_load((tree / "recipes" / f"{name}.yaml").read_text())


def lower_keys(node):
    """GDK compares recipe keys lower-cased."""
    if isinstance(node, dict):
        return {str(k).lower(): lower_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [lower_keys(v) for v in node]
    return node


def test_gg_build_makes_both_component_trees_and_the_bundle(built):
    for name in ("com.voicebot.VoiceInterpreter", "com.voicebot.VoicePlayer"):
        tree = built[name]
        (artifact,) = (tree / "artifacts" / name / "1.0.0").glob("*.zip")
        names = zipfile.ZipFile(artifact).namelist()
        folder = artifact.stem
        assert "main.py" in names and "requirements.txt" in names  # at the root: Greengrass adds the folder
        assert any(re.fullmatch(r"wheels/voicebot-[\d.]+-py3-none-any\.whl", n) for n in names)
        recipe = built_recipe(tree, name)
        assert recipe["ComponentName"] == name and recipe["ComponentVersion"] == "1.0.0"
        assert all(folder in m["Artifacts"][0]["URI"] for m in recipe["Manifests"])
        assert {m["Platform"]["architecture"] for m in recipe["Manifests"]} == {"aarch64", "amd64"}  # (no 32-bit)
    bundle = built_recipe(built["com.voicebot.VoiceBot"], "com.voicebot.VoiceBot")
    assert set(bundle["ComponentDependencies"]) == {"com.voicebot.VoiceInterpreter", "com.voicebot.VoicePlayer"}


@needs_schemas
def test_every_gdk_config_validates_against_the_gdk_schema():
    schema = json.loads((SHARED / "gdk_config_schema.json").read_text())
    configs = [p for p in ROOT.rglob("gdk-config.json") if ".venv" not in p.parts and "greengrass-build" not in p.parts]
    assert len(configs) == 3
    for path in configs:
        config = json.loads(path.read_text())
        jsonschema.validate(config, schema)
        assert len(config["component"]) == 1
        gg_build.find_recipe(path.parent)  # exactly one recipe beside it


@needs_schemas
def test_built_recipes_validate_and_stay_under_16000_bytes(built):
    schema = json.loads((SHARED / "recipe_schema.json").read_text())
    for name, tree in built.items():
        path = tree / "recipes" / f"{name}.yaml"
        assert path.stat().st_size < 16_000
        jsonschema.validate(lower_keys(yaml.safe_load(path.read_text())), schema)


def test_recipes_grant_only_the_things_own_topics():
    for name in ("com.voicebot.VoiceInterpreter", "com.voicebot.VoicePlayer"):
        recipe = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
        config = recipe["ComponentConfiguration"]["DefaultConfiguration"]
        assert all(isinstance(v, str) for k, v in config.items() if k != "accessControl")  # numbers as strings
        for service, policies in config["accessControl"].items():
            assert service in ("aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.pubsub")
            for policy in policies.values():
                assert all("*" not in op for op in policy["operations"])
                assert all("{iot:thingName}" in r and "#" not in r and "+" not in r for r in policy["resources"])
    deps = yaml.safe_load((ROOT / "recipes" / "com.voicebot.VoiceInterpreter.yaml").read_text())["ComponentDependencies"]
    assert deps["aws.greengrass.TokenExchangeService"]["DependencyType"] == "HARD"


# --------------------------------------------------------------------------------------------------------------------
# IPC
# --------------------------------------------------------------------------------------------------------------------


def done_future(value=None) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


@pytest.fixture
def ipc():
    client = create_autospec(GreengrassCoreIPCClientV2, instance=True)
    client.publish_to_iot_core_async.return_value = done_future()
    client.publish_to_topic_async.return_value = done_future()
    client.subscribe_to_iot_core.return_value = (None, create_autospec(object))
    client.subscribe_to_topic.return_value = (None, create_autospec(object))
    client.subscribe_to_configuration_update.return_value = (None, Mock(spec=["close"]))
    return client


def test_ipc_transport_routes_cloud_topics_to_iot_core_and_local_ones_to_pubsub(ipc):
    transport = IpcTransport(ipc)
    topics = Topics("voicebot", "pi-9")
    transport.publish(topics.event, b"{}", 1).result(1)
    ipc.publish_to_iot_core_async.assert_called_once_with(topic_name=topics.event, qos=QOS.AT_LEAST_ONCE, payload=b"{}")
    transport.publish(topics.player_state, b'{"state":"idle"}', 0).result(1)
    kwargs = ipc.publish_to_topic_async.call_args.kwargs
    assert kwargs["topic"] == topics.player_state
    assert kwargs["publish_message"].binary_message.message == b'{"state":"idle"}'

    got: list[tuple[str, bytes]] = []
    transport.subscribe(topics.audio, 1, lambda t, p: got.append((t, p)))
    sub = ipc.subscribe_to_iot_core.call_args.kwargs
    assert sub["topic_name"] == topics.audio and sub["qos"] == QOS.AT_LEAST_ONCE
    sub["on_stream_event"](IoTCoreMessage(message=MQTTMessage(topic_name=topics.audio, payload=b"x")))
    transport.subscribe(topics.control, 0, lambda t, p: got.append((t, p)))
    local = ipc.subscribe_to_topic.call_args.kwargs
    assert local["topic"] == topics.control
    local["on_stream_event"](SubscriptionResponseMessage(
        binary_message=BinaryMessage(message=b"y", context=MessageContext(topic=topics.control))))
    assert got == [(topics.audio, b"x"), (topics.control, b"y")]
    # The nucleus closes a stream (it restarted, or dropped us): the component is told, once, and exits (runner.py).
    lost: list[str] = []
    transport.on_lost(lost.append)
    sub["on_stream_closed"]()
    local["on_stream_closed"]()
    assert len(lost) == 1 and topics.audio in lost[0]
    transport.close()
    ipc.close.assert_called_once()


def test_player_over_ipc_subscribes_right_and_applies_a_configuration_update_live(ipc):
    topics = Topics("voicebot", "pi-9")
    values = {"Volume": "0.8", "GapTimeoutS": "3.0", "Sink": "device"}
    ipc.get_configuration.side_effect = lambda **kw: GetConfigurationResponse(component_name="p", value=dict(values))

    async def main() -> Player:
        player = Player(IpcTransport(ipc), topics, NullSink(realtime=False))
        config = ComponentConfig(ipc)
        player.apply_config(config.load())
        assert player.volume == 0.8 and player.queue.gap_timeout_s == 3.0
        updated = asyncio.Event()

        def on_change(cfg):
            player.apply_config(cfg)
            updated.set()

        config.watch(asyncio.get_running_loop(), on_change)
        stop = asyncio.Event()
        task = asyncio.create_task(player.run(stop))
        await asyncio.wait_for(player.ready.wait(), 5)
        values.update(Volume="0.25", GapTimeoutS="1.5")
        callback = ipc.subscribe_to_configuration_update.call_args.kwargs["on_stream_event"]
        callback(ConfigurationUpdateEvents(configuration_update_event=ConfigurationUpdateEvent(
            component_name="p", key_path=["Volume"])))
        await asyncio.wait_for(updated.wait(), 5)
        stop.set()
        await task
        config.close()  # the update stream is closed when the component stops
        ipc.subscribe_to_configuration_update.return_value[1].close.assert_called_once()
        return player

    player = asyncio.run(main())
    assert player.volume == 0.25 and player.queue.gap_timeout_s == 1.5
    on_error = ipc.subscribe_to_configuration_update.call_args.kwargs["on_stream_error"]
    assert on_error(RuntimeError("stream broke")) is False  # logged; the update stream stays open
    subscribed = {c.kwargs["topic_name"]: c.kwargs["qos"] for c in ipc.subscribe_to_iot_core.call_args_list}
    assert subscribed == {topics.audio: QOS.AT_LEAST_ONCE, topics.event: QOS.AT_LEAST_ONCE,
                          topics.command: QOS.AT_LEAST_ONCE}
    assert [c.kwargs["topic"] for c in ipc.subscribe_to_topic.call_args_list] == [topics.control]
    states = [c.kwargs["publish_message"].binary_message.message for c in ipc.publish_to_topic_async.call_args_list]
    assert states and all(json.loads(s)["state"] == "idle" for s in states)


def test_a_bad_configuration_value_keeps_the_old_one(ipc):
    player = Player(IpcTransport(ipc), Topics("voicebot", "pi"), NullSink(realtime=False))
    player.apply_config({"Volume": "loud", "GapTimeoutS": "2", "Volume2": "0.5"})
    assert player.volume == 1.0 and player.queue.gap_timeout_s == 2.0
    errors = [e.detail for e in player.events if e.type == "error"]  # what the monitor and the console see
    assert len(errors) == 2 and "Volume2" in errors[0] and "Volume='loud' rejected" in errors[1], errors


# --------------------------------------------------------------------------------------------------------------------
# Monitor
# --------------------------------------------------------------------------------------------------------------------


def test_monitor_prints_a_recorded_turn_legibly():
    clock = iter([100.0, 100.2, 100.35, 100.4, 100.5, 103.0, 104.0])
    formatter = MonitorFormatter(clock=lambda: next(clock))
    t = Topics("voicebot", "pi-1")
    rid = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    audio = split_audio(request_id=rid, seq=0, last=True, text="맑아요.", audio=b"\0\0" * 16000, format="pcm_s16le",
                        sample_rate=16000)[0]
    recorded = [
        (t.transcript, encode(TranscriptMessage(request_id=rid, state="completed", text="날씨 어때?"))),
        (t.answer, encode(AnswerMessage(request_id=rid, seq=0, text="맑아요.", last=True))),
        (t.audio, encode(audio)),
        (t.event, encode(EventMessage(source="player", type="playing", request_id=rid, seq=0))),
        (t.player_state, b'{"v":1,"ts":1,"state":"speaking"}'),
        (t.event, encode(EventMessage(source="player", type="played", request_id=rid, last=True))),
    ]
    lines = [line for topic, payload in recorded for line in formatter.lines(topic, payload)]
    assert "pi-1" in lines[0] and "transcript" in lines[0] and "2e3f4a5b" in lines[0] and "“날씨 어때?”" in lines[0]
    assert "seq 0 (last)  맑아요." in lines[1]
    assert "seq 0 part 1/1 pcm_s16le 31.2 KB 1.00 s (last)" in lines[2]
    assert "player: playing seq 0" in lines[3]
    assert '"state": "speaking"' in lines[4]
    assert lines[-1].strip() == ("pi-1           latency 2e3f4a5b: first answer +200 ms, first audio +350 ms, "
                                 "playing +400 ms, done +3000 ms")  # (and which device)
    assert formatter.lines("voicebot/pi-1/answer", b"{broken")[0].endswith("(unreadable: payload is not UTF-8 JSON "
                                                                           "(Expecting property name enclosed in "
                                                                           "double quotes: line 1 column 2 (char 1)))")


def test_monitor_command_against_a_local_broker(broker, connect):
    proc = subprocess.Popen([sys.executable, "-m", "voicebot.cli", "monitor", "--broker", broker.url, "--count", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching voicebot/#" in proc.stderr.readline()
        assert proc.stderr.readline().strip() == "ready"
        t = Topics("voicebot", "mon-pi")
        device = connect("device")
        device.publish(t.transcript, encode(TranscriptMessage(request_id="r-1", state="proceeding", text="안녕")),
                       1).result(5)
        device.publish(t.event, encode(EventMessage(source="player", type="skipped", request_id="r-1", seq=2,
                                                    detail="gap timeout")), 1).result(5)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill() if proc.poll() is None else None
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert "mon-pi" in lines[0] and "proceeding" in lines[0] and "“안녕”" in lines[0]
    assert "player: skipped seq 2  gap timeout" in lines[1]


def test_deployment_template_names_the_built_components_and_enables_interpolation():
    deployment = json.loads((ROOT / "deploy" / "deployment.json").read_text())
    assert ":thinggroup/" in deployment["targetArn"]
    components = deployment["components"]
    for d in COMPONENT_DIRS:
        name, entry = gg_build.read_gdk_config(d)
        assert components[name]["componentVersion"] == entry["version"]
    nucleus = json.loads(components["aws.greengrass.Nucleus"]["configurationUpdate"]["merge"])
    assert nucleus["interpolateComponentConfiguration"] is True
    for name in ("com.voicebot.VoiceInterpreter", "com.voicebot.VoicePlayer"):
        merge = json.loads(components[name]["configurationUpdate"]["merge"])
        defaults = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())[
            "ComponentConfiguration"]["DefaultConfiguration"]
        assert set(merge) <= set(defaults) and all(isinstance(v, str) for v in merge.values())


def test_token_exchange_role_additions_use_no_wildcard_actions():
    policy = json.loads((ROOT / "deploy" / "token-exchange-role-policy.json").read_text())
    actions = [s["Action"] for s in policy["Statement"]]
    assert actions == ["transcribe:StartStreamTranscription", "s3:GetObject"]
    assert policy["Statement"][1]["Resource"].startswith("arn:aws:s3:::voicebot-components-")


def test_ipc_callbacks_run_on_one_thread_so_messages_stay_in_order(monkeypatch):
    import awsiot.greengrasscoreipc.clientv2 as clientv2

    made = {}

    def fake_client(*, executor):
        made["executor"] = executor
        return create_autospec(GreengrassCoreIPCClientV2, instance=True)

    monkeypatch.setattr(clientv2, "GreengrassCoreIPCClientV2", fake_client)
    IpcTransport()
    assert made["executor"]._max_workers == 1
    made["executor"].shutdown()
