"""What `sam build` packs for each function (the Makefile's build-<Name>Function): the handler and voicebot, arm64
wheels for the python3.12 runtime, no bytecode of another Python, no numpy."""

from __future__ import annotations

import pytest

from voicebot.cloud.lambda_check import Artifact, build


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
