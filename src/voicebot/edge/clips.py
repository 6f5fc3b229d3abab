"""Short Korean clips the player can say without the cloud: rendered with espeak-ng when the component is built
(``make gg-build`` puts them in the player's artifact), so the device needs no speech synthesis of its own.

Outside Greengrass (``voicebot player``, the tests) they are rendered once into a cache folder on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from voicebot.edge.apology import Clip

log = logging.getLogger(__name__)

CLIPS: dict[Clip, str] = {
    "trouble": "잠시 문제가 생겼어요. 다시 말씀해 주세요.",
    "offline": "지금은 인터넷에 연결되어 있지 않아요.",
}
#: Set by the recipe to the clips inside the artifact.
CLIPS_ENV = "VOICEBOT_CLIPS"


def render_clips(out_dir: Path) -> dict[Clip, Path]:
    """Write every clip as a 16 kHz WAV into ``out_dir`` (needs espeak-ng: the build machine's, not the device's)."""
    from voicebot.cloud.tts import EspeakTts

    tts = EspeakTts()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[Clip, Path] = {}
    for name, text in CLIPS.items():
        path = out_dir / f"{name}.wav"
        path.write_bytes(tts.synthesize(text).data)
        written[name] = path
    return written


def default_clips_dir() -> Path:
    env = os.environ.get(CLIPS_ENV)
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "voicebot" / "clips"


def load_clips(directory: Path | None = None) -> dict[Clip, bytes]:
    """The clips' WAV bytes. Missing ones are rendered when espeak-ng is here; otherwise the player runs without
    them (one log line): it still works, it just cannot apologise by itself."""
    directory = directory or default_clips_dir()
    missing = [name for name in CLIPS if not (directory / f"{name}.wav").is_file()]
    if missing:
        try:
            render_clips(directory)
        except Exception as exc:  # no espeak-ng, a read-only folder
            log.warning("player: the local apology clips are missing from %s and cannot be made here (%s); the "
                        "device cannot apologise without the cloud", directory, exc)
    return {name: (directory / f"{name}.wav").read_bytes() for name in CLIPS if (directory / f"{name}.wav").is_file()}
