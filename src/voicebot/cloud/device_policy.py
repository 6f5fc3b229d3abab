"""The AWS IoT policy of one voicebot core device: its own client ids and topics, nothing of any other device.

AWS IoT Greengrass core devices cannot use thing policy variables (``${iot:Connection.Thing.ThingName}``): the
nucleus's HTTPS data-plane calls carry no MQTT client id to resolve them from. So each device gets a policy written
for its thing name, generated here and attached next to (instead of) the installer's ``GreengrassV2IoTThingPolicy``,
which allows every IoT action on every resource.

What the voicebot components may publish and subscribe to comes from the recipes' ``accessControl`` for
``aws.greengrass.ipc.mqttproxy`` (the nucleus relays those over its own connection, so the certificate's policy must
allow them too). What the nucleus needs itself follows the minimal AWS IoT policy for Greengrass core devices in
the Greengrass developer guide: its MQTT connections (``THING`` and ``THING#2``...), the ``$aws/things/THING/``
topics (shadows, jobs, health), the token exchange role alias, and the Greengrass data-plane actions.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
RECIPE_NAMES = ("com.voicebot.VoiceInterpreter.yaml", "com.voicebot.VoicePlayer.yaml")
from voicebot.protocol import THING_NAME, THING_NAME_RULE  # noqa: E402 - one validator for every --thing

# Greengrass data-plane actions a core device calls over HTTPS (deployments, component artifacts).
GREENGRASS_ACTIONS = [
    "greengrass:GetComponentVersionArtifact",
    "greengrass:ResolveComponentCandidates",
    "greengrass:GetDeploymentConfiguration",
    "greengrass:ListThingGroupsForCoreDevice",
]


class PolicyError(ValueError):
    pass


def component_topics(recipes: list[Path] | None = None) -> dict[str, set[str]]:
    """The IoT Core topics the components publish to and subscribe to, with ``{iot:thingName}`` unrendered."""
    import yaml  # (only here: `voicebot` builds this command's parser for every command)

    paths = recipes or [RECIPES / name for name in RECIPE_NAMES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PolicyError(f"recipes not found ({', '.join(missing)}): run this from a voicebot checkout")
    topics: dict[str, set[str]] = {"publish": set(), "subscribe": set()}
    for path in paths:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
        control = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
        for policy in control.get("aws.greengrass.ipc.mqttproxy", {}).values():
            for operation in policy["operations"]:
                kind = {"aws.greengrass#PublishToIoTCore": "publish",
                        "aws.greengrass#SubscribeToIoTCore": "subscribe"}[operation]
                topics[kind].update(policy["resources"])
    return topics


def device_policy(thing: str, *, region: str, account: str, role_alias: str, partition: str = "aws",
                  topic_root: str = "voicebot", recipes: list[Path] | None = None) -> dict[str, Any]:
    """The policy document for core device ``thing``."""
    if not THING_NAME.match(thing):
        raise PolicyError(f"{thing!r} is not allowed: {THING_NAME_RULE}")
    if not re.fullmatch(r"\d{12}", account):
        raise PolicyError(f"{account!r} is not a 12-digit AWS account id")
    arn = f"arn:{partition}:iot:{region}:{account}"

    def own(topic: str) -> str:
        rendered = topic.replace("{iot:thingName}", thing)
        if rendered.split("/", 1)[0] != "voicebot":
            raise PolicyError(f"recipe topic {topic!r} is outside the voicebot topic root")
        return f"{topic_root}/{rendered.split('/', 1)[1]}"

    topics = component_topics(recipes)
    publish = sorted(own(t) for t in topics["publish"])
    subscribe = sorted(own(t) for t in topics["subscribe"])
    system = f"$aws/things/{thing}/*"  # shadows, jobs, greengrass(v2)/health of this thing only
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ConnectAsThisThing", "Effect": "Allow", "Action": "iot:Connect",
             "Resource": [f"{arn}:client/{thing}", f"{arn}:client/{thing}#*"]},
            {"Sid": "PublishOwnTopics", "Effect": "Allow", "Action": "iot:Publish",
             "Resource": [f"{arn}:topic/{t}" for t in [*publish, system]]},
            {"Sid": "SubscribeOwnTopics", "Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": [f"{arn}:topicfilter/{t}" for t in [*subscribe, system]]},
            {"Sid": "ReceiveOwnTopics", "Effect": "Allow", "Action": "iot:Receive",
             "Resource": [f"{arn}:topic/{t}" for t in [*subscribe, system]]},
            {"Sid": "ThisThingsShadows", "Effect": "Allow",
             "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
             "Resource": f"{arn}:thing/{thing}"},
            {"Sid": "TokenExchange", "Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
             "Resource": f"{arn}:rolealias/{role_alias}"},
            # As in the Greengrass guide's minimal core device policy (deployments and artifacts of this device).
            {"Sid": "GreengrassDataPlane", "Effect": "Allow", "Action": GREENGRASS_ACTIONS, "Resource": "*"},
        ],
    }


def monitor_policy(*, region: str, account: str, partition: str = "aws", topic_root: str = "voicebot") -> dict[str, Any]:
    """`voicebot monitor` on a laptop: watch every device's topics, publish nothing."""
    arn = f"arn:{partition}:iot:{region}:{account}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ConnectAsMonitor", "Effect": "Allow", "Action": "iot:Connect",
             "Resource": f"{arn}:client/voicebot-monitor-*"},
            {"Sid": "WatchEveryDevice", "Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": f"{arn}:topicfilter/{topic_root}/#"},
            {"Sid": "ReceiveEveryDevice", "Effect": "Allow", "Action": "iot:Receive",
             "Resource": f"{arn}:topic/{topic_root}/*"},
        ],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--thing", help="the core device's thing name")
    who.add_argument("--monitor", action="store_true", help="the read-only policy of `voicebot monitor` instead")
    parser.add_argument("--region", required=True)
    parser.add_argument("--account", required=True, help="12-digit AWS account id")
    parser.add_argument("--role-alias", default="GreengrassCoreTokenExchangeRoleAlias",
                        help="the token exchange role alias the installer created (--tes-role-alias-name)")
    parser.add_argument("--topic-root", default="voicebot")
    parser.add_argument("--partition", default="aws")


def policy_json(args: argparse.Namespace) -> str:
    if not re.fullmatch(r"\d{12}", args.account):
        raise PolicyError(f"{args.account!r} is not a 12-digit AWS account id")
    if args.monitor:
        return json.dumps(monitor_policy(region=args.region, account=args.account, partition=args.partition,
                                         topic_root=args.topic_root), indent=2)
    policy = device_policy(args.thing, region=args.region, account=args.account, role_alias=args.role_alias,
                           partition=args.partition, topic_root=args.topic_root)
    return json.dumps(policy, indent=2, ensure_ascii=False)
