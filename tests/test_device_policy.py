"""Per-device isolation: each core device's AWS IoT policy, evaluated the way AWS IoT Core evaluates policies
(resource ARNs with '*' and '?' wildcards, '+' and '#' taken literally, an explicit Deny wins, no match is a deny),
lets device pi-01 reach its own topics and client ids and nothing of pi-02's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from voicebot.cloud.device_policy import PolicyError, component_topics, device_policy
from voicebot.local.cloud import default_template
from voicebot.local.rules import load_template
from voicebot.protocol import Topics

ARN = "arn:aws:iot:ap-northeast-2:123456789012"


def _glob(pattern: str) -> re.Pattern:
    # IoT policy resources: '*' any run of characters (slashes included), '?' one character, the rest literal.
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


def allowed(policy: dict, action: str, resource: str) -> bool:
    decisions = set()
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if any(_glob(a).fullmatch(action) for a in actions) and any(_glob(r).fullmatch(resource) for r in resources):
            decisions.add(statement["Effect"])
    return "Allow" in decisions and "Deny" not in decisions


def can(policy: dict, action: str, kind: str, name: str) -> bool:
    return allowed(policy, f"iot:{action}", f"{ARN}:{kind}/{name}")


@pytest.fixture(scope="module")
def pi01() -> dict:
    return device_policy("pi-01", region="ap-northeast-2", account="123456789012", role_alias="VoicebotTesAlias")


def test_the_evaluator_follows_iot_wildcard_rules():
    policy = {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": f"{ARN}:topic/a/*"},
                            {"Effect": "Deny", "Action": "iot:*", "Resource": f"{ARN}:topic/a/secret"},
                            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": f"{ARN}:topicfilter/b/+"}]}
    assert can(policy, "Publish", "topic", "a/b/c") and not can(policy, "Publish", "topic", "a/secret")
    assert can(policy, "Subscribe", "topicfilter", "b/+") and not can(policy, "Subscribe", "topicfilter", "b/x")
    assert not can(policy, "Receive", "topic", "a/b")


def test_a_device_reaches_its_own_topics_and_client_ids(pi01):
    own = Topics("voicebot", "pi-01")
    assert can(pi01, "Connect", "client", "pi-01") and can(pi01, "Connect", "client", "pi-01#2")
    for topic in (own.transcript, own.event):
        assert can(pi01, "Publish", "topic", topic)
    for topic in (own.audio, own.event, own.command):
        assert can(pi01, "Subscribe", "topicfilter", topic) and can(pi01, "Receive", "topic", topic)
    # what the nucleus itself uses: health, jobs and deployment shadow of its own thing, and the token exchange
    assert can(pi01, "Publish", "topic", "$aws/things/pi-01/greengrassv2/health/json")
    assert can(pi01, "Subscribe", "topicfilter", "$aws/things/pi-01/jobs/notify-next")
    assert can(pi01, "AssumeRoleWithCertificate", "rolealias", "VoicebotTesAlias")
    assert can(pi01, "GetThingShadow", "thing", "pi-01")
    assert allowed(pi01, "greengrass:ResolveComponentCandidates", "*")


def test_pi01_is_denied_everything_of_pi02(pi01):
    other = Topics("voicebot", "pi-02")
    for client in ("pi-02", "pi-02#2", "pi-010", "pi-01-x", "voicebot-pi-02"):
        assert not can(pi01, "Connect", "client", client), client
    for topic in (other.transcript, other.event, other.answer, other.audio, other.command):
        assert not can(pi01, "Publish", "topic", topic), topic
        assert not can(pi01, "Subscribe", "topicfilter", topic), topic
        assert not can(pi01, "Receive", "topic", topic), topic
    for wide in ("voicebot/#", "voicebot/+/audio", "#", "$aws/things/+/shadow/#", "$aws/things/pi-02/jobs/#"):
        assert not can(pi01, "Subscribe", "topicfilter", wide), wide
    assert not can(pi01, "Publish", "topic", "$aws/things/pi-02/shadow/update")
    assert not can(pi01, "GetThingShadow", "thing", "pi-02")
    assert not can(pi01, "Publish", "topic", "voicebot/pi-01/answer")  # answers come from the cloud only


def test_the_policy_grants_exactly_what_the_recipes_use():
    topics = component_topics()
    policy = device_policy("pi-7", region="ap-northeast-2", account="123456789012", role_alias="a")
    for topic in topics["publish"]:
        assert can(policy, "Publish", "topic", topic.replace("{iot:thingName}", "pi-7"))
    for topic in topics["subscribe"]:
        assert can(policy, "Receive", "topic", topic.replace("{iot:thingName}", "pi-7"))
    granted = {r for s in policy["Statement"] if s["Action"] == "iot:Publish" for r in s["Resource"]}
    assert len(granted) == len(topics["publish"]) + 1  # + the $aws/things/pi-7/ system topics


@pytest.mark.parametrize("thing", ["pi-*", "pi?", "a/b", "", "pi 01", "x" * 129])
def test_a_name_that_would_widen_the_policy_is_refused(thing):
    with pytest.raises(PolicyError):
        device_policy(thing, region="ap-northeast-2", account="123456789012", role_alias="a")


def test_the_command_prints_the_policy_json():
    voicebot = Path(sys.executable).with_name("voicebot")
    done = subprocess.run([voicebot, "device-policy", "--thing", "pi-01", "--region", "ap-northeast-2", "--account",
                           "123456789012", "--role-alias", "VoicebotTesAlias"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert json.loads(done.stdout) == device_policy("pi-01", region="ap-northeast-2", account="123456789012",
                                                    role_alias="VoicebotTesAlias")
    watch = subprocess.run([voicebot, "device-policy", "--monitor", "--region", "ap-northeast-2", "--account",
                            "123456789012"], capture_output=True, text=True, check=True, timeout=60)
    monitor = json.loads(watch.stdout)
    assert can(monitor, "Connect", "client", "voicebot-monitor-4242") and not can(monitor, "Connect", "client", "pi-01")
    assert can(monitor, "Subscribe", "topicfilter", "voicebot/#")
    assert can(monitor, "Receive", "topic", "voicebot/pi-02/audio")
    assert not can(monitor, "Publish", "topic", "voicebot/pi-02/transcript")
    bad = subprocess.run([voicebot, "device-policy", "--thing", "pi-*", "--region", "r", "--account", "123456789012"],
                         capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2 and "is not allowed" in bad.stderr


def grants_to_many_things(document: dict) -> list[str]:
    """Client ids and topics a policy grants with '*' at (or before) the thing's level: voicebot/<thing>/... and
    client/<thing> are the only levels a device name sits at ('client/pi-01#*' is pi-01's extra connections)."""
    found = []
    for statement in document["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            text = resource if isinstance(resource, str) else json.dumps(resource)
            if re.search(r":(client|topic|topicfilter)/(?:[^/\"]*/)?[^/\"#]*\*", text):
                found.append(text)
    return found


OLD_EXAMPLE_POLICY = {"Statement": [  # the stack's example DevicePolicy before per-device policies
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": {"Fn::Sub": "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:client/${ThingNamePrefix}*"}},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": [{"Fn::Sub": "arn:${AWS::Partition}:iot:${AWS::Region}:"
                                                               "${AWS::AccountId}:topic/${TopicRoot}/${ThingNamePrefix}*/transcript"}]},
]}


def test_the_stack_has_no_device_policy_wider_than_one_thing():
    assert len(grants_to_many_things(OLD_EXAMPLE_POLICY)) == 2  # the check catches the old prefix-wide policy
    assert grants_to_many_things(device_policy("pi-01", region="r", account="123456789012", role_alias="a")) == []
    resources = load_template(default_template())["Resources"]
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IoT::Policy":
            assert grants_to_many_things(resource["Properties"]["PolicyDocument"]) == [], name
