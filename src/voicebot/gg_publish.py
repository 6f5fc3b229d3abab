"""Publishes the Greengrass components with the real GDK: ``make gg-publish``.

``gdk component publish`` uploads the artifact to S3 *before* it registers the component version, so publishing a
version that is already registered would overwrite the artifact devices download, and only then fail. This checks
every component's version against the account first and refuses with the command that bumps it; then it runs
``gdk component build`` and ``gdk component publish`` in each component folder (the interpreter, the player, then the
bundle that depends on both).

    python -m voicebot.gg_publish [--gdk PATH] [--region REGION]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voicebot.gg_build import DEFAULT_DIRS, REPO, BuildError, read_gdk_config


class AlreadyPublished(BuildError):
    pass


def component_arn(client: Any, sts: Any, region: str, name: str) -> str:
    account = sts.get_caller_identity()["Account"]
    partition = client.meta.partition
    return f"arn:{partition}:greengrass:{region}:{account}:components:{name}"


def registered_versions(client: Any, arn: str) -> set[str]:
    versions: set[str] = set()
    kwargs: dict[str, Any] = {"arn": arn}
    while True:
        page = client.list_component_versions(**kwargs)
        versions |= {v["componentVersion"] for v in page.get("componentVersions", [])}
        if not page.get("nextToken"):
            return versions
        kwargs["nextToken"] = page["nextToken"]


def check_unpublished(dirs: Sequence[Path], *, region: str | None = None, session: Any = None) -> None:
    """Raise AlreadyPublished naming every component whose version the account already has."""
    import boto3

    session = session or boto3.Session()
    taken = []
    for d in dirs:
        name, entry = read_gdk_config(d)
        where = region or entry.get("publish", {}).get("region")
        client = session.client("greengrassv2", region_name=where)
        arn = component_arn(client, session.client("sts", region_name=where), where, name)
        if entry["version"] in registered_versions(client, arn):
            taken.append(f"{name} {entry['version']}")
    if taken:
        raise AlreadyPublished(f"already registered in this account: {', '.join(taken)}. A published version is "
                               "never overwritten (devices may be running its artifact): bump it with "
                               "`make version V=X.Y.Z` and publish again")


def find_gdk(given: str | None) -> str:
    """``--gdk``/``GDK=``, else ``gdk`` on PATH, else the venv the README installs it into (``.venv-gdk``)."""
    if given:
        found = shutil.which(given)
        if not found:
            raise BuildError(f"GDK not found at {given!r} (GDK= or --gdk): give the path to the gdk command")
        return found
    for candidate in (shutil.which("gdk"), str(REPO / ".venv-gdk" / "bin" / "gdk")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BuildError("the Greengrass Development Kit (gdk) is not installed: python3 -m venv .venv-gdk && "
                     ".venv-gdk/bin/pip install git+https://github.com/aws-greengrass/aws-greengrass-gdk-cli.git@v1.6.2 "
                     "(then `make gg-publish` finds it), or GDK=/path/to/gdk")


def publish(dirs: Sequence[Path], *, gdk: str = "gdk", region: str | None = None) -> None:
    check_unpublished(dirs, region=region)
    extra = ["--region", region] if region else []
    for d in dirs:
        for step in ("build", "publish"):
            cmd = [gdk, "component", step] + (extra if step == "publish" else [])
            print(f"{d}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, cwd=d, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voicebot.gg_publish")
    parser.add_argument("--gdk", default=os.environ.get("GDK") or None,
                        help="the gdk command (default: GDK=, else gdk on PATH, else .venv-gdk/bin/gdk)")
    parser.add_argument("--region", help="override publish.region of gdk-config.json")
    parser.add_argument("dirs", nargs="*", type=Path, help="component folders (default: all three)")
    args = parser.parse_args(argv)
    dirs = args.dirs or [REPO / d for d in DEFAULT_DIRS]
    try:
        gdk = find_gdk(args.gdk)
        print(f"gg-publish: using {gdk}", flush=True)
        publish(dirs, gdk=gdk, region=args.region)
    except BuildError as exc:
        print(f"gg-publish: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"gg-publish: {' '.join(exc.cmd)} failed with exit code {exc.returncode}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore: no credentials, no region, no network, no permission
        if type(exc).__module__.split(".")[0] not in ("botocore", "boto3"):
            raise
        print(f"gg-publish: AWS could not be asked which versions are registered ({exc}); publishing needs AWS "
              "credentials for the account and region in gdk-config.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
