"""Builds the Greengrass components: what ``gdk component build`` (custom build) and ``make gg-build`` run.

For each component directory (one ``gdk-config.json`` + one ``recipe.yaml`` each) it fills
``greengrass-build/artifacts/<name>/<version>/`` with the artifact zip and ``greengrass-build/recipes/<recipe file>``
with the recipe, placeholders filled, YAML anchors expanded, checked against the 16 000-byte limit. The recipe keeps
the file name GDK resolved ``recipe.yaml`` to (the links point into ``recipes/``): ``gdk component publish`` looks
for exactly that name.

The artifact holds the entry point, the ``voicebot`` wheel, ``install.sh`` and the hash-pinned requirements
(``components/requirements-*.txt``, made by ``make lock``). Identical inputs give a byte-identical zip.

One version: ``[project] version`` in ``pyproject.toml`` is the package's, the wheel's and every component's. The
gdk-config.json files carry a copy (GDK reads it there); ``make version V=X.Y.Z`` writes all of them, and the build
refuses copies that disagree.

    python -m voicebot.gg_build [COMPONENT_DIR ...]      (default: the two components and the bundle)
    python -m voicebot.gg_build --set-version X.Y.Z      (pyproject, every gdk-config.json, deploy/deployment.json)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_RECIPE_BYTES = 16_000
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIRS = ("components/voice-interpreter", "components/voice-player", ".")
#: Zip entries get this time (the zip format cannot store anything before 1980).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

#: Each component's artifact (the recipe's Run script starts {artifacts:decompressedPath}/<artifact>/main.py).
ARTIFACTS = {"com.voicebot.VoicePlayer": "voicebot-player", "com.voicebot.VoiceInterpreter": "voicebot-interpreter"}
#: The hash-pinned requirements each artifact carries (artifact name -> file in components/).
REQUIREMENTS = {
    "com.voicebot.VoicePlayer": {"requirements.txt": "requirements-device.txt"},
    "com.voicebot.VoiceInterpreter": {"requirements.txt": "requirements-device.txt",
                                      "requirements-vosk.txt": "requirements-device-vosk.txt"},
}
#: Artifacts that carry the local apology clips (edge/clips.py), rendered here so the device needs no TTS.
WITH_CLIPS = {"com.voicebot.VoicePlayer"}
#: Artifacts that carry the audio end-of-turn model (edge/turn_model.py: two files of pipecat-ai's wheel).
WITH_TURN_MODEL = {"com.voicebot.VoiceInterpreter"}
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuiltComponent:
    name: str
    version: str
    recipe: Path
    artifacts: list[Path]


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def project_root(start: Path) -> Path:
    """The checkout a component directory belongs to (the first folder above it with a pyproject.toml)."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise BuildError(f"no pyproject.toml above {start}")


def project_version(root: Path = REPO) -> str:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def read_gdk_config(component_dir: Path) -> tuple[str, dict[str, Any]]:
    config = json.loads((component_dir / "gdk-config.json").read_text())
    components = config.get("component", {})
    if len(components) != 1:
        raise BuildError(f"{component_dir}/gdk-config.json must name exactly one component (GDK allows one)")
    return next(iter(components.items()))


def find_recipe(component_dir: Path) -> Path:
    found = [p for p in (component_dir / "recipe.yaml", component_dir / "recipe.json") if p.exists()]
    if len(found) != 1:
        raise BuildError(f"{component_dir} needs exactly one recipe.yaml or recipe.json (found {len(found)})")
    return found[0]


def render_recipe(source: Path, *, name: str, version: str, author: str) -> dict[str, Any]:
    text = source.read_text(encoding="utf-8")
    for key, value in (("{COMPONENT_NAME}", name), ("{COMPONENT_VERSION}", version), ("{COMPONENT_AUTHOR}", author)):
        text = text.replace(key, value)
    recipe = yaml.safe_load(text)
    if recipe.get("ComponentName") != name:
        raise BuildError(f"{source}: ComponentName {recipe.get('ComponentName')!r} is not {name!r} from gdk-config.json")
    return recipe


def build_wheel(out_dir: Path, root: Path = REPO) -> Path:
    """The voicebot wheel (pure Python), built from a clean copy of the sources with fixed timestamps.

    A copy, because setuptools reuses ``build/`` in the source tree (a deleted module would ship again).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="voicebot-src-") as tmp:
        src = Path(tmp)
        shutil.copy2(root / "pyproject.toml", src)
        shutil.copy2(root / "README.md", src)
        shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
        env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}  # 1980-01-01: reproducible wheel entries
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(out_dir), str(src)], check=True, env=env)
    wheels = sorted(out_dir.glob("voicebot-*.whl"))
    if not wheels:
        raise BuildError("pip wheel made no voicebot wheel")
    return wheels[-1]


def _zip_entry(zf: zipfile.ZipFile, name: str, data: bytes, *, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o755 if executable else 0o644) << 16
    zf.writestr(info, data)


def artifact_files(component_dir: Path, name: str, wheel: Path, root: Path) -> dict[str, bytes]:
    """What one component's artifact holds, by path inside the zip."""
    components = root / "components"
    files = {
        "main.py": (component_dir / "main.py").read_bytes(),
        "install.sh": (components / "install.sh").read_bytes(),
        f"wheels/{wheel.name}": wheel.read_bytes(),
    }
    for target, lock in REQUIREMENTS[name].items():
        path = components / lock
        if not path.is_file():
            raise BuildError(f"{path} is missing: run `make lock`")
        files[target] = path.read_bytes()
    if name in WITH_CLIPS:
        files.update(clip_files())
    if name in WITH_TURN_MODEL:
        files.update(turn_model_files())
    # What install.sh compares with the venv's stamp: any change of content means a new install.
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + hashlib.sha256(files[key]).digest())
    files["build-id"] = f"{name} {wheel.name.split('-')[1]} {digest.hexdigest()[:16]}\n".encode()
    return files


def clip_files() -> dict[str, bytes]:
    """The player's Korean apology clips, rendered with this machine's espeak-ng."""
    from voicebot.cloud.tts import TtsError
    from voicebot.edge.clips import render_clips

    with tempfile.TemporaryDirectory() as tmp:
        try:
            rendered = render_clips(Path(tmp))
        except TtsError as exc:
            raise BuildError(f"the player's apology clips cannot be rendered: {exc}") from exc
        return {f"clips/{path.name}": path.read_bytes() for path in rendered.values()}


def turn_model_files() -> dict[str, bytes]:
    """Smart Turn v3's weights and feature extractor, from this machine's pipecat-ai distribution (``make venv``
    installs it without its dependencies), so that the device needs neither pipecat nor a download."""
    from voicebot.edge.turn_model import TurnModelUnavailable, model_files

    try:
        weights, features = model_files()
    except TurnModelUnavailable as exc:
        raise BuildError(f"the interpreter's audio turn model cannot be packed: {exc}") from exc
    return {f"turn/{weights.name}": weights.read_bytes(), f"turn/{features.name}": features.read_bytes()}


def build_artifact(component_dir: Path, name: str, artifact_dir: Path, wheel: Path, root: Path = REPO) -> Path:
    zip_path = artifact_dir / f"{ARTIFACTS[name]}.zip"
    files = artifact_files(component_dir, name, wheel, root)
    # Greengrass unarchives X.zip into {artifacts:decompressedPath}/X/, so the files sit at the zip's root.
    with zipfile.ZipFile(zip_path, "w") as zf:
        for key in sorted(files):
            _zip_entry(zf, key, files[key], executable=key.endswith(".sh"))
    return zip_path


def check_version(component_dir: Path, name: str, version: str, root: Path) -> None:
    package = project_version(root)
    if version != package:
        raise BuildError(f"{component_dir / 'gdk-config.json'} says {name} {version}, but the package is {package}: "
                         f"run `make version V={package}` (or the version you mean) so both agree")
    if not _SEMVER.match(version):
        raise BuildError(f"version {version!r} is not MAJOR.MINOR.PATCH (NEXT_PATCH is not supported: the package, "
                         "the wheel and the component share one version)")


def build_component(component_dir: Path, *, wheel: Path | None = None) -> BuiltComponent:
    component_dir = component_dir.resolve()
    root = project_root(component_dir)
    name, entry = read_gdk_config(component_dir)
    version, author = str(entry["version"]), entry.get("author", "voicebot")
    check_version(component_dir, name, version, root)
    source = find_recipe(component_dir)
    recipe = render_recipe(source, name=name, version=version, author=author)
    build = component_dir / "greengrass-build"
    shutil.rmtree(build, ignore_errors=True)
    artifact_dir = build / "artifacts" / name / version
    artifact_dir.mkdir(parents=True)
    (build / "recipes").mkdir(parents=True)
    artifacts: list[Path] = []
    if name in REQUIREMENTS:
        if wheel is None:
            wheel = build_wheel(Path(tempfile.mkdtemp(prefix="voicebot-wheel-")), root)
        artifacts.append(build_artifact(component_dir, name, artifact_dir, wheel, root))
    text = yaml.dump(recipe, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=1000)
    if len(text.encode()) > MAX_RECIPE_BYTES:
        raise BuildError(f"built recipe of {name} is {len(text.encode())} bytes; Greengrass refuses over "
                         f"{MAX_RECIPE_BYTES}")
    # GDK resolves the recipe.yaml link and publishes greengrass-build/recipes/<that file's name>.
    recipe_path = build / "recipes" / source.resolve().name
    recipe_path.write_text(text, encoding="utf-8")
    return BuiltComponent(name, version, recipe_path, artifacts)


def set_version(version: str, root: Path = REPO) -> list[Path]:
    """Write one version everywhere it is spelled: pyproject.toml, every gdk-config.json, deploy/deployment.json."""
    if not _SEMVER.match(version):
        raise BuildError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    changed = []
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    new = re.sub(r'(?m)^version = "[^"]*"$', f'version = "{version}"', text, count=1)
    if new == text and f'version = "{version}"' not in text:
        raise BuildError("pyproject.toml has no `version = \"...\"` line")
    pyproject.write_text(new, encoding="utf-8")
    changed.append(pyproject)
    names = []
    for d in DEFAULT_DIRS:
        path = root / d / "gdk-config.json"
        config = json.loads(path.read_text())
        for name, entry in config["component"].items():
            entry["version"] = version
            names.append(name)
        path.write_text(json.dumps(config, indent=2) + "\n")
        changed.append(path)
    deployment = root / "deploy" / "deployment.json"
    if deployment.is_file():
        data = json.loads(deployment.read_text())
        for name in names:
            if name in data.get("components", {}):
                data["components"][name]["componentVersion"] = version
        deployment.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        changed.append(deployment)
    return changed


def refuse_registered(dirs: list[Path]) -> None:
    """A registered component version is immutable: devices may be running its artifact, and `gdk component publish`
    uploads the artifact to S3 before it finds out that the version exists. `make gg-publish` checks first; this
    guards the plain GDK path (`gdk component build`, which runs this builder, then `publish`) when AWS credentials
    are at hand. Without them (an offline build, CI) it says so and builds."""
    if os.environ.get("VOICEBOT_SKIP_REGISTRY_CHECK") == "1":
        return
    from voicebot.gg_publish import AlreadyPublished, check_unpublished

    try:
        import boto3

        session = boto3.Session()
        if session.get_credentials() is None:
            print("gg-build: no AWS credentials here, so not checked whether this version is already registered "
                  "(`make gg-publish` checks before it publishes)", file=sys.stderr)
            return
        check_unpublished(dirs, session=session)
    except AlreadyPublished:
        raise
    except Exception as exc:  # no network, no permission: the build itself does not need AWS
        print(f"gg-build: could not check whether this version is already registered ({str(exc)[:200]})",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["--set-version"]:
        if len(args) != 2:
            raise BuildError("usage: python -m voicebot.gg_build --set-version X.Y.Z")
        for path in set_version(args[1]):
            print(f"version {args[1]}: {path}")
        return 0
    dirs = [Path(a) for a in args] or [REPO / d for d in DEFAULT_DIRS]
    refuse_registered(dirs)
    with tempfile.TemporaryDirectory(prefix="voicebot-wheel-") as tmp:
        wheel = build_wheel(Path(tmp), project_root(dirs[0]))
        for d in dirs:
            built = build_component(d, wheel=wheel)
            size = built.recipe.stat().st_size
            print(f"built {built.name} {built.version}: {built.recipe} ({size} bytes)"
                  + "".join(f", {a} ({a.stat().st_size // 1024} KiB)" for a in built.artifacts))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        print(f"gg-build: {exc}", file=sys.stderr)
        sys.exit(1)
