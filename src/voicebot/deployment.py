"""`voicebot deployment`: the thing-group deployment (deploy/deployment.json) for a topic root of your choice.

The recipes' ``accessControl`` names the ``voicebot`` topic root, because Greengrass interpolates only a few recipe
variables (``{iot:thingName}``) inside component configuration: a device deployed with another ``TopicRoot`` would be
refused every IPC publish and subscribe. This writes the deployment with ``TopicRoot`` and a matching
``accessControl`` merged into each component's configuration, from the recipes themselves (one source of truth).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from voicebot.protocol import DEFAULT_TOPIC_ROOT

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {"com.voicebot.VoiceInterpreter": "com.voicebot.VoiceInterpreter.yaml",
           "com.voicebot.VoicePlayer": "com.voicebot.VoicePlayer.yaml"}


class DeploymentError(ValueError):
    pass


def access_control(component: str, topic_root: str, recipes: Path = ROOT / "recipes") -> dict[str, Any]:
    """The component's ``accessControl`` with every topic under ``topic_root`` instead of ``voicebot``."""
    import yaml

    recipe = yaml.safe_load((recipes / RECIPES[component]).read_text(encoding="utf-8"))
    control = copy.deepcopy(recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"])
    for service in control.values():
        for policy in service.values():
            renamed = []
            for resource in policy["resources"]:
                first, _, rest = resource.partition("/")
                if first != DEFAULT_TOPIC_ROOT:
                    raise DeploymentError(f"{component}: {resource!r} is outside the {DEFAULT_TOPIC_ROOT} topic root")
                renamed.append(f"{topic_root}/{rest}")
            policy["resources"] = renamed
    return control


def deployment(topic_root: str, template: Path = ROOT / "deploy" / "deployment.json") -> dict[str, Any]:
    from voicebot.edge.settings import PlayerConfig

    PlayerConfig.model_validate({"TopicRoot": topic_root})  # the same rule as the recipes' TopicRoot
    data = json.loads(template.read_text(encoding="utf-8"))
    for component in RECIPES:
        entry = data["components"].setdefault(component, {})
        update = entry.setdefault("configurationUpdate", {})
        merge = json.loads(update.get("merge", "{}"))
        merge["TopicRoot"] = topic_root
        if topic_root != DEFAULT_TOPIC_ROOT:
            merge["accessControl"] = access_control(component, topic_root)
        else:
            merge.pop("accessControl", None)
        update["merge"] = json.dumps(merge, ensure_ascii=False, separators=(",", ":"))
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic-root", required=True,
                        help="the devices' topic root (the stack's TopicRoot and `device-policy --topic-root` too)")
    parser.add_argument("--template", type=Path, default=ROOT / "deploy" / "deployment.json",
                        help="the deployment to start from")


def main(args: argparse.Namespace) -> int:
    print(json.dumps(deployment(args.topic_root, args.template), indent=2, ensure_ascii=False))
    return 0
