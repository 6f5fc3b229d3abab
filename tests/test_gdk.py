"""The real Greengrass Development Kit (GDK CLI) builds and publishes every component folder of this checkout.

GDK is installed into its own venv from ``GDK_SOURCE`` (``make test`` passes ``../shared/tools/gdk-cli-1.6.2`` when it
is there; the default is the GitHub URL the README gives). It talks to moto's server for S3 and STS and to a
greengrassv2 stand-in that checks every request with botocore's ParamValidator.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.greengrass_standin import GreengrassV2StandIn
from voicebot import gg_build, gg_publish

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
GDK_SOURCE = os.environ.get("GDK_SOURCE", "git+https://github.com/aws-greengrass/aws-greengrass-gdk-cli.git@v1.6.2")
DIRS = [ROOT / "components" / "voice-interpreter", ROOT / "components" / "voice-player", ROOT]
REGION = "ap-northeast-2"
ACCOUNT = "123456789012"  # moto's account
BUCKET = f"voicebot-components-{REGION}-{ACCOUNT}"


@pytest.fixture(scope="module")
def gdk() -> Path:
    """The gdk command, installed into .venv-gdk (reused while GDK_SOURCE is the same)."""
    venv = ROOT / ".venv-gdk"
    stamp = venv / "installed-from"
    if not (stamp.is_file() and stamp.read_text() == GDK_SOURCE):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", GDK_SOURCE], capture_output=True,
                                 text=True, check=False)
        if install.returncode != 0:
            pytest.skip(f"GDK could not be installed from {GDK_SOURCE}: {install.stderr.strip()[-300:]}")
        stamp.write_text(GDK_SOURCE)
    return venv / "bin" / "gdk"


@pytest.fixture
def aws(monkeypatch):
    """moto (S3, STS) and the greengrassv2 stand-in on loopback, reached through the SDK's endpoint variables."""
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    standin = GreengrassV2StandIn(ACCOUNT).start()
    host, port = moto.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ENDPOINT_URL_STS": f"http://{host}:{port}", "AWS_ENDPOINT_URL_GREENGRASSV2": standin.url,
        "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VOICEBOT_SKIP_REGISTRY_CHECK", raising=False)  # the builder asks the stand-in
    yield standin
    standin.stop()
    moto.stop()


def run_gdk(gdk: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(gdk), "component", *args], cwd=folder, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, f"gdk component {' '.join(args)} in {folder}:\n{result.stdout[-3000:]}" \
                                   f"\n{result.stderr[-3000:]}"
    return result


def test_gdk_builds_and_publishes_every_component_folder(gdk, aws):
    for folder in DIRS:
        run_gdk(gdk, folder, "build")
        run_gdk(gdk, folder, "publish")

    assert aws.errors == []  # every call GDK made fits the greengrassv2 model
    assert set(aws.recipes) == {("com.voicebot.VoiceInterpreter", "1.0.0"), ("com.voicebot.VoicePlayer", "1.0.0"),
                                ("com.voicebot.VoiceBot", "1.0.0")}
    s3 = boto3.client("s3", region_name=REGION)
    for name, artifact in gg_build.ARTIFACTS.items():
        recipe = aws.recipes[(name, "1.0.0")]
        uris = {a["URI"] for m in recipe["Manifests"] for a in m["Artifacts"]}
        assert uris == {f"s3://{BUCKET}/{name}/1.0.0/{artifact}.zip"}  # GDK filled in the bucket
        key = f"{name}/1.0.0/{artifact}.zip"
        uploaded = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        folder = next(d for d in DIRS if gg_build.read_gdk_config(d)[0] == name)
        built = (folder / "greengrass-build" / "artifacts" / name / "1.0.0" / f"{artifact}.zip").read_bytes()
        assert uploaded == built
        names = zipfile.ZipFile(folder / "greengrass-build" / "artifacts" / name / "1.0.0" / f"{artifact}.zip").namelist()
        assert {"main.py", "install.sh", "requirements.txt", "build-id"} <= set(names)
        if artifact == "voicebot-player":  # the apology clips, rendered at build time (no TTS on the device)
            assert {"clips/trouble.wav", "clips/offline.wav"} <= set(names)
        else:  # the audio end-of-turn model's two files (no pipecat, no download on the device)
            assert {"turn/smart-turn-v3.2-cpu.onnx", "turn/_whisper_features.py"} <= set(names)
    bundle = aws.recipes[("com.voicebot.VoiceBot", "1.0.0")]
    assert set(bundle["ComponentDependencies"]) == {"com.voicebot.VoiceInterpreter", "com.voicebot.VoicePlayer"}

    # Publishing the same version again would overwrite the artifact devices download: make gg-publish refuses
    # before anything is uploaded, and says how to bump.
    before = {k: hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()).hexdigest()
              for k in (o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])}
    with pytest.raises(gg_publish.AlreadyPublished, match=r"make version V=X\.Y\.Z"):
        gg_publish.publish(DIRS, gdk=str(gdk))
    # and the plain GDK path: `gdk component build` runs the project's builder, which refuses the same way
    rebuilt = subprocess.run([str(gdk), "component", "build"], cwd=DIRS[1], capture_output=True, text=True,
                             timeout=600, check=False)
    assert rebuilt.returncode != 0 and "already registered" in rebuilt.stdout + rebuilt.stderr
    after = {k: hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()).hexdigest()
             for k in (o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])}
    assert after == before
