"""Builds the Greengrass components: what ``gdk component build`` (custom build) and ``make gg-build`` run.

For each component directory (one ``gdk-config.json`` + one ``recipe.yaml`` each) it fills
``greengrass-build/artifacts/<name>/<version>/`` with the artifact zip (the component's entry point, the ``voicebot``
wheel and its requirements) and ``greengrass-build/recipes/recipe.yaml`` with the recipe, placeholders filled, YAML
anchors expanded, checked against the 16 000-byte limit.

    python -m voicebot.gg_build [COMPONENT_DIR ...]      (default: the two components and the bundle)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_RECIPE_BYTES = 16_000
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIRS = ("components/voice-interpreter", "components/voice-player", ".")

#: Each component's artifact (the recipe's Run script starts {artifacts:decompressedPath}/<artifact>/main.py).
ARTIFACTS = {"com.voicebot.VoicePlayer": "voicebot-player", "com.voicebot.VoiceInterpreter": "voicebot-interpreter"}
#: What each component's artifact installs on the device.
REQUIREMENTS = {
    "com.voicebot.VoicePlayer": {"requirements.txt": "voicebot[device]"},
    "com.voicebot.VoiceInterpreter": {"requirements.txt": "voicebot[device]",
                                      "requirements-vosk.txt": "voicebot[device,vosk]"},
}


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


def build_wheel(out_dir: Path) -> Path:
    """The voicebot wheel (pure Python), built from this checkout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out_dir), str(REPO)], check=True)
    wheels = sorted(out_dir.glob("voicebot-*.whl"))
    if not wheels:
        raise BuildError("pip wheel made no voicebot wheel")
    return wheels[-1]


def build_artifact(component_dir: Path, name: str, artifact_dir: Path, wheel: Path) -> Path:
    zip_path = artifact_dir / f"{ARTIFACTS[name]}.zip"
    # Greengrass unarchives X.zip into {artifacts:decompressedPath}/X/, so the files sit at the zip's root.
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(component_dir / "main.py", "main.py")
        zf.write(wheel, f"wheels/{wheel.name}")
        version = wheel.name.split("-")[1]
        for filename, requirement in REQUIREMENTS[name].items():
            zf.writestr(filename, f"{requirement}=={version}\n")
    return zip_path


def build_component(component_dir: Path, *, wheel: Path | None = None) -> BuiltComponent:
    component_dir = component_dir.resolve()
    name, entry = read_gdk_config(component_dir)
    version, author = entry["version"], entry.get("author", "voicebot")
    if version == "NEXT_PATCH":
        raise BuildError("set an exact version in gdk-config.json (the custom build names the artifact folder by it)")
    recipe = render_recipe(find_recipe(component_dir), name=name, version=version, author=author)
    build = component_dir / "greengrass-build"
    shutil.rmtree(build, ignore_errors=True)
    artifact_dir = build / "artifacts" / name / version
    artifact_dir.mkdir(parents=True)
    (build / "recipes").mkdir(parents=True)
    artifacts: list[Path] = []
    if name in REQUIREMENTS:
        if wheel is None:
            wheel = build_wheel(Path(tempfile.mkdtemp(prefix="voicebot-wheel-")))
        artifacts.append(build_artifact(component_dir, name, artifact_dir, wheel))
    text = yaml.dump(recipe, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=1000)
    if len(text.encode()) > MAX_RECIPE_BYTES:
        raise BuildError(f"built recipe of {name} is {len(text.encode())} bytes; Greengrass refuses over "
                         f"{MAX_RECIPE_BYTES}")
    recipe_path = build / "recipes" / "recipe.yaml"
    recipe_path.write_text(text, encoding="utf-8")
    return BuiltComponent(name, version, recipe_path, artifacts)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    dirs = [Path(a) for a in args] or [REPO / d for d in DEFAULT_DIRS]
    with tempfile.TemporaryDirectory(prefix="voicebot-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
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
