"""A topic root other than `voicebot` works end to end: the deployment grants each component exactly the topics it
uses under that root (IPC would refuse anything else), the device policy names them, and a turn runs on them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from voicebot.cloud.device_policy import device_policy
from voicebot.deployment import access_control, deployment
from voicebot.protocol import Topics

ROOT = "kitchen"


def granted(control: dict, operation: str) -> set[str]:
    return {r for service in control.values() for policy in service.values() if operation in policy["operations"]
            for r in policy["resources"]}


def test_the_deployment_grants_each_component_its_topics_under_the_root():
    merges = {name: json.loads(entry["configurationUpdate"]["merge"])
              for name, entry in deployment(ROOT)["components"].items() if name.endswith(("Interpreter", "Player"))}
    t = Topics(ROOT, "{iot:thingName}")  # as the nucleus renders it per device
    player = merges["com.voicebot.VoicePlayer"]
    assert player["TopicRoot"] == ROOT and player["Volume"] == "1.0"  # the template's own merge is kept
    assert granted(player["accessControl"], "aws.greengrass#SubscribeToIoTCore") == {t.audio, t.event, t.command}
    assert granted(player["accessControl"], "aws.greengrass#PublishToIoTCore") == {t.event}
    assert granted(player["accessControl"], "aws.greengrass#PublishToTopic") == {t.player_state, t.reference}
    assert granted(player["accessControl"], "aws.greengrass#SubscribeToTopic") == {t.control}
    interpreter = merges["com.voicebot.VoiceInterpreter"]
    assert interpreter["TopicRoot"] == ROOT
    assert granted(interpreter["accessControl"], "aws.greengrass#PublishToIoTCore") == {t.transcript, t.event}
    assert granted(interpreter["accessControl"], "aws.greengrass#SubscribeToTopic") == {t.player_state, t.reference}
    assert granted(interpreter["accessControl"], "aws.greengrass#PublishToTopic") == {t.control}
    # the default root needs no merge: the recipes' own accessControl applies
    default = deployment("voicebot")["components"]["com.voicebot.VoicePlayer"]["configurationUpdate"]["merge"]
    assert "accessControl" not in json.loads(default)
    # and the certificate's policy allows the same IoT Core topics for a real device
    policy = device_policy("pi-9", region="ap-northeast-2", account="123456789012", role_alias="a", topic_root=ROOT)
    publish = next(s for s in policy["Statement"] if s["Sid"] == "PublishOwnTopics")["Resource"]
    assert {f"arn:aws:iot:ap-northeast-2:123456789012:topic/{ROOT}/pi-9/{k}" for k in ("transcript", "event")} <= \
        set(publish)
    import yaml

    from voicebot.deployment import ROOT as REPO

    recipe = yaml.safe_load((REPO / "recipes" / "com.voicebot.VoicePlayer.yaml").read_text())
    assert access_control("com.voicebot.VoicePlayer", "voicebot") == \
        recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]  # the recipe is the source


@pytest.mark.slow
def test_a_turn_on_another_topic_root(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "demo", "--text", "안녕하세요", "--llm", "loopback",
                           "--topic-root", ROOT, "--out", str(tmp_path), "--json"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["sentences"] and summary["audio_seconds"] > 1


def test_the_command_refuses_a_root_the_recipes_would_refuse():
    proc = subprocess.run([sys.executable, "-m", "voicebot.cli", "deployment", "--topic-root", "a/b"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "--topic-root" in proc.stderr and "Traceback" not in proc.stderr
