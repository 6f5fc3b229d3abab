"""`make lambda-check`: build both Lambda functions the way `sam build` does and report what a cold start costs.

For each function it prints the artifact's size, checks that it carries no bytecode of another Python than the
runtime's and no numpy (declared by langchain-aws, never imported here), and times ``import app`` in a fresh
interpreter. The real artifact holds arm64 wheels that cannot run on this machine, so the import is timed on a twin
built for this machine's platform, with the runtime's Python version when one is installed.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FUNCTIONS = ("ChatFunction", "SpeechFunction")
LAMBDA_PYTHON = "3.12"


class CheckError(RuntimeError):
    pass


@dataclass
class Artifact:
    function: str
    path: Path

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def problems(self, python: str = LAMBDA_PYTHON) -> list[str]:
        tag = "cpython-" + python.replace(".", "")
        found = [f"bytecode of another Python: {p.relative_to(self.path)}" for p in self.path.rglob("*.pyc")
                 if f".{tag}." not in p.name]
        found += [f"ships {p.name}" for p in self.path.glob("numpy*")]
        if not (self.path / "app.py").is_file() or not (self.path / "voicebot").is_dir():
            found.append("no app.py / voicebot package")
        return found


def build(function: str, out: Path, *, platforms: str | None = None, python: str = LAMBDA_PYTHON) -> Artifact:
    """What `sam build` runs for the function (BuildMethod: makefile)."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["make", "--no-print-directory", "-C", str(REPO), f"build-{function}", f"ARTIFACTS_DIR={out}",
            f"LAMBDA_PYTHON={python}"]
    if not runtime_python(python):
        args.append("LAMBDA_BYTECODE=none")  # (the report says so: "no bytecode", below)
    if platforms is not None:
        args.append(f"LAMBDA_PLATFORMS={platforms}")
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CheckError(f"build-{function} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return Artifact(function, out)


def runtime_python(version: str = LAMBDA_PYTHON) -> str | None:
    """A python of that version here (what compiles the artifact's bytecode), or None."""
    candidate = shutil.which(f"python{version}")
    if candidate and subprocess.run([candidate, "-c", "import sys"], capture_output=True, check=False).returncode == 0:
        return candidate
    return None


def host_python() -> tuple[str, str]:
    """An interpreter of the Lambda's Python version if there is one here, else this one (and its version)."""
    candidate = shutil.which(f"python{LAMBDA_PYTHON}")
    if candidate and subprocess.run([candidate, "-c", "import sys"], capture_output=True, check=False).returncode == 0:
        return candidate, LAMBDA_PYTHON
    return sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}"


def import_seconds(artifact: Artifact, python: str, runs: int = 3) -> float:
    """Median wall time of a cold ``import app`` (fresh interpreter, the artifact read-only like /var/task)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(artifact.path),
           "PYTHONDONTWRITEBYTECODE": "1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "HISTORY_TABLE": "h", "IDEMPOTENCY_TABLE": "i"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([python, "-c", "import app"], cwd=artifact.path, env=env, capture_output=True,
                              text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise CheckError(f"{artifact.function}: import app failed: {done.stderr[-1500:]}")
    return statistics.median(times)


def main() -> int:
    python, version = host_python()
    machine = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine(), "x86_64")
    failed = False
    with tempfile.TemporaryDirectory(prefix="voicebot-lambda-") as tmp:
        for function in FUNCTIONS:
            print(f"{function}: building ...", flush=True)
            artifact = build(function, Path(tmp) / function)
            twin = build(function, Path(tmp) / f"{function}-host", python=version,
                         platforms=f"--platform manylinux_2_28_{machine} --platform manylinux2014_{machine}")
            seconds = import_seconds(twin, python)
            problems = artifact.problems()
            failed |= bool(problems)
            bytecode = "" if runtime_python() else (f"\n  NOTE: no bytecode in the arm64 artifact (no python{LAMBDA_PYTHON} "
                                                    "here: `sam build` stops and says how to get one)")
            print(f"{function}: {artifact.size_bytes / 1e6:.1f} MB unzipped (arm64), import app {seconds:.2f} s "
                  f"(python {version} on {machine}, median of 3)" + "".join(f"\n  PROBLEM: {p}" for p in problems)
                  + bytecode, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as exc:
        print(f"lambda-check: {exc}", file=sys.stderr)
        sys.exit(2)
