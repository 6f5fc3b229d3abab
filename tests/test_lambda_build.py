"""What `sam build` packs for each function (the Makefile's build-<Name>Function): the handler and voicebot, arm64
wheels for the python3.12 runtime, no bytecode of another Python, no numpy."""

from __future__ import annotations

import pytest

from voicebot.cloud.lambda_check import Artifact, build

pytestmark = pytest.mark.slow  # real processes end to end: `make test`, not `make test-fast`


@pytest.mark.parametrize("function", ["ChatFunction", "SpeechFunction"])
def test_the_lambda_artifact_holds_nothing_the_runtime_would_ignore(function, tmp_path):
    artifact = build(function, tmp_path / function)
    assert artifact.problems() == []
    assert any(artifact.path.glob("pydantic_core/*aarch64*.so"))  # wheels for the runtime's CPU
    if function == "ChatFunction":
        assert (artifact.path / "langchain_aws").is_dir()
    else:
        assert not (artifact.path / "langchain_core").exists()
    # the check itself: bytecode of the build machine's Python is what it exists to catch
    stray = artifact.path / "voicebot" / "__pycache__" / "protocol.cpython-311.pyc"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"")
    (artifact.path / "numpy").mkdir()
    assert len(Artifact(function, artifact.path).problems()) == 2


def test_without_the_runtimes_python_the_build_stops_and_says_how(tmp_path):
    """Never a silent fallback to an artifact without bytecode (cold starts twice as slow): one line saying how to
    get the interpreter, or the explicit LAMBDA_BYTECODE=none."""
    import subprocess

    from voicebot.cloud.lambda_check import REPO

    def make(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "build-SpeechFunction",
                               f"ARTIFACTS_DIR={tmp_path}", "LAMBDA_COMPILER=", *extra], capture_output=True,
                              text=True, check=False)

    stopped = make()
    assert stopped.returncode != 0
    assert "no python3.12 on PATH" in stopped.stderr and "LAMBDA_COMPILER" in stopped.stderr
    explicit = make("LAMBDA_BYTECODE=none")
    assert explicit.returncode == 0 and "ships no bytecode (LAMBDA_BYTECODE=none)" in explicit.stdout
