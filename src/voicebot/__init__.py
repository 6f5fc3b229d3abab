"""voicebot: a Korean voice-to-voice assistant for Raspberry Pi devices on AWS IoT Greengrass v2."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voicebot")  # one version: [project] version in pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
