"""The built components' lifecycle as the nucleus runs it, on this machine: artifacts unarchived under a
Greengrass-like root, recipe variables rendered, ``Setenv`` passed as the environment, Install and Run as shell
scripts. Covers a first install and a played sentence, an upgrade to new code in the same work folder, an offline
restart, byte-identical rebuilds, and a device name with spaces and parentheses."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.conftest import Recorder
from tests.speech_fixtures import spoken
from voicebot import gg_build
from voicebot.cloud.tts import pcm_to_wav
from voicebot.protocol import QOS_AT_LEAST_ONCE, Topics, encode, new_request_id, split_audio

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
PLAYER = "com.voicebot.VoicePlayer"
PLAYER_DIR = Path("components") / "voice-player"
THING = "gg-pi-1"


def render(script: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in variables:
            raise AssertionError(f"unrendered recipe variable {{{key}}}")
        return variables[key]

    return re.sub(r"\{((?:artifacts|work|iot|configuration):[^}]*)\}", sub, script)


@dataclass
class Lifecycle:
    install: str
    run: str
    install_timeout: int
    env: dict[str, str]


class Device:
    """A Greengrass root: packages/artifacts-unarchived/NAME/VERSION per deployed version, work/NAME kept across them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def deploy(self, tree: Path, name: str, **config: str) -> Lifecycle:
        recipe = yaml.safe_load((tree / "recipes" / f"{name}.yaml").read_text())
        version = recipe["ComponentVersion"]
        manifest = next(m for m in recipe["Manifests"] if m["Platform"]["architecture"] == "amd64")
        artifacts = self.root / "packages" / "artifacts-unarchived" / name / version
        work = self.root / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        for artifact in (tree / "artifacts" / name / version).glob("*.zip"):
            with zipfile.ZipFile(artifact) as zf:  # Unarchive: ZIP, as the nucleus does it (no file modes kept)
                zf.extractall(artifacts / artifact.stem)
        settings = {**recipe["ComponentConfiguration"]["DefaultConfiguration"], **config}
        variables = {"artifacts:decompressedPath": str(artifacts), "work:path": str(work), "iot:thingName": THING,
                     **{f"configuration:/{k}": v for k, v in settings.items() if isinstance(v, str)}}
        lifecycle = manifest["Lifecycle"]
        setenv = {k: render(v, variables) for k, v in lifecycle.get("Setenv", {}).items()}
        return Lifecycle(render(lifecycle["Install"]["Script"], variables), render(lifecycle["Run"]["Script"], variables),
                         int(lifecycle["Install"]["Timeout"]), {**os.environ, **setenv})

    @staticmethod
    def install(lifecycle: Lifecycle, **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["sh", "-c", lifecycle.install], env={**lifecycle.env, **env}, capture_output=True,
                              text=True, timeout=lifecycle.install_timeout, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done


def copy_project(dest: Path) -> Path:
    skip = shutil.ignore_patterns(".git", ".venv*", "greengrass-build", "out", ".*_cache", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT, dest, ignore=skip, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of this checkout, so that version bumps and code changes stay out of the real one."""
    return copy_project(tmp_path_factory.mktemp("project") / "voicebot")


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> Device:
    return Device(tmp_path_factory.mktemp("greengrass"))


@pytest.fixture(scope="module")
def player_v1(project: Path, device: Device) -> Lifecycle:
    """The player 1.0.0 built by `make gg-build` and installed once (the pinned dependencies come from the index)."""
    assert gg_build.main([str(project / PLAYER_DIR)]) == 0
    lifecycle = device.deploy(project / PLAYER_DIR / "greengrass-build", PLAYER)
    device.install(lifecycle)
    return lifecycle


def test_installed_player_plays_a_sentence_over_mqtt(player_v1, device, project, tmp_path, broker, connect):
    played = tmp_path / "played.wav"
    lifecycle = device.deploy(project / PLAYER_DIR / "greengrass-build", PLAYER, Sink=f"wav:{played}")
    topics = Topics("voicebot", THING)
    observer = Recorder()
    connect("observer").subscribe("voicebot/#", 1, observer)
    proc = subprocess.Popen(["sh", "-c", lifecycle.run], env={**lifecycle.env, "VOICEBOT_BROKER": broker.url},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        audio = (np.clip(spoken("안녕하세요") * 32767, -32768, 32767)).astype(np.int16)
        rid = new_request_id()
        observer.wait_for(lambda ms: any(t == topics.player_state for t, _ in ms), 60)  # it is up: idle published
        for m in split_audio(request_id=rid, seq=0, last=True, text="안녕하세요", audio=pcm_to_wav(audio, 16000),
                             format="wav", sample_rate=16000):
            connect("cloud").publish(topics.audio, encode(m), QOS_AT_LEAST_ONCE).result(5)
        observer.wait_for(lambda ms: any(t == topics.event and b'"played"' in p and rid.encode() in p
                                         and b'"seq"' not in p for t, p in ms), 30)
    finally:
        proc.send_signal(signal.SIGTERM)  # how Greengrass stops a component
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    samples, rate = sf.read(played, dtype="int16")
    assert rate == 16000 and np.array_equal(samples, audio)


def read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_a_device_name_with_spaces_and_parentheses_arrives_intact_and_a_missing_device_is_retried(player_v1, device,
                                                                                               project, broker,
                                                                                               connect):
    name = "device:USB Audio (hw:2,0) 'left' $HOME; `x`"
    lifecycle = device.deploy(project / PLAYER_DIR / "greengrass-build", PLAYER, Sink=name)
    events = Recorder()
    connect("observer").subscribe(Topics("voicebot", THING).event, 1, events)
    proc = subprocess.Popen(["sh", "-c", lifecycle.run], env={**lifecycle.env, "VOICEBOT_BROKER": broker.url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=read_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        seen = []
        while not any("is not available" in line for line in seen):
            seen.append(lines.get(timeout=60))
        (line,) = [line for line in seen if "is not available" in line]
        assert f"audio output {name!r} is not available" in line and "voicebot devices" in line
        assert not any("Traceback" in line or "syntax error" in line for line in seen), seen
        assert proc.poll() is None  # still running: it retries until the device appears (for 60 s)
        # and whoever watches the fleet is told which device is missing
        events.wait_for(lambda ms: any(b'"error"' in p and b"is not available" in p for _, p in ms), 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_upgrade_to_new_code_in_the_same_work_folder_and_an_offline_restart(player_v1, device, project):
    venv_python = device.root / "work" / PLAYER / "venv" / "bin" / "python"
    probe = ["-c", "import voicebot; print(voicebot.__version__, getattr(voicebot, 'UPGRADE_PROBE', 'old code'))"]
    assert subprocess.run([venv_python, *probe], capture_output=True, text=True, check=True).stdout.split() == \
        ["1.0.0", "old", "code"]

    # What an earlier version installed and this one does not use (Vosk, after SttBackend went back to transcribe).
    site = next((device.root / "work" / PLAYER / "venv" / "lib").glob("python3*/site-packages"))
    (site / "stray_model.py").write_text("")
    info = site / "stray_model-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stray-model\nVersion: 1.0\n")
    (info / "RECORD").write_text("stray_model.py,,\nstray_model-1.0.dist-info/METADATA,,\n"
                                 "stray_model-1.0.dist-info/RECORD,,\n")
    gg_build.set_version("1.0.1", project)
    init = project / "src" / "voicebot" / "__init__.py"
    init.write_text(init.read_text() + '\nUPGRADE_PROBE = "new-code"\n')
    assert gg_build.main([str(project / PLAYER_DIR)]) == 0
    lifecycle = device.deploy(project / PLAYER_DIR / "greengrass-build", PLAYER)
    assert "1.0.1" in lifecycle.run
    offline = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # nothing to download: same locks
    first = device.install(lifecycle, **offline)
    assert "installing" in first.stdout
    assert "removing packages this version does not use: stray-model" in first.stdout
    assert not (site / "stray_model.py").exists() and not info.exists()
    assert subprocess.run([venv_python, *probe], capture_output=True, text=True, check=True).stdout.split() == \
        ["1.0.1", "new-code"]

    again = device.install(lifecycle, **offline)  # the nucleus runs Install at every start
    assert "is installed" in again.stdout and "installing" not in again.stdout


def test_identical_inputs_build_byte_identical_artifacts(project, tmp_path):
    tree = project / PLAYER_DIR / "greengrass-build"
    assert gg_build.main([str(project / PLAYER_DIR)]) == 0
    first = {p.relative_to(tree): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert gg_build.main([str(project / PLAYER_DIR)]) == 0
    second = {p.relative_to(tree): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    assert first.keys() == second.keys() and any(p.suffix == ".zip" for p in first)
    assert first == second
