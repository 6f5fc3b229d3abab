"""voicebot: a Korean voice-to-voice assistant for Raspberry Pi devices on AWS IoT Greengrass v2."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # ``voicebot.__version__`` is looked up when asked for: importlib.metadata costs every process tens of
    # milliseconds and a megabyte or two, and the components never need it.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("voicebot")  # one version: [project] version in pyproject.toml
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'voicebot' has no attribute {name!r}")
