"""What a user meets while setting up a Pi: `voicebot devices` naming the exact Sink/Source values, and a clear
message, not a traceback, when Vosk's native library cannot load (libatomic1 missing on Raspberry Pi OS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOICEBOT = Path(sys.executable).with_name("voicebot")


def alsa_home(tmp_path: Path) -> dict[str, str]:
    """A HOME whose ~/.asoundrc defines a PCM named like a real card would be ("voicebot_card"): PortAudio lists it."""
    (tmp_path / ".asoundrc").write_text("pcm.voicebot_card {\n  type null\n}\n")
    return {**os.environ, "HOME": str(tmp_path)}


def test_devices_lists_each_device_with_the_value_that_opens_it(tmp_path):
    env = alsa_home(tmp_path)
    listing = subprocess.run([VOICEBOT, "devices"], env=env, capture_output=True, text=True, timeout=60, check=True)
    output, _, inputs = listing.stdout.partition("input devices")
    assert "device:voicebot_card" in output and "mic:voicebot_card" in inputs
    # The printed value is what the player's Sink takes: it opens that device and plays through it.
    play = ("import asyncio, numpy as np; from voicebot.edge.audio import open_sink; "
            "s = open_sink('device:voicebot_card'); asyncio.run(s.play(np.zeros(1600, np.float32))); s.close(); "
            "print('played')")
    done = subprocess.run([sys.executable, "-c", play], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "played", done.stderr[-2000:]


def test_a_vosk_library_that_cannot_load_stops_the_interpreter_with_the_package_to_install(tmp_path):
    # libvosk.so is loaded by cffi when `vosk` is imported; on a Pi without libatomic1 that raises this OSError.
    shim = tmp_path / "vosk"
    shim.mkdir()
    (shim / "__init__.py").write_text(
        'raise OSError("cannot load library \'libvosk.so\': libatomic.so.1: cannot open shared object file")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "VOICEBOT_STT": "vosk", "VOICEBOT_SOURCE": "mic"}
    main = ROOT / "components" / "voice-interpreter" / "main.py"
    done = subprocess.run([sys.executable, main, "--thing", "pi-x"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 3
    assert "sudo apt-get install libatomic1" in done.stderr and "Traceback" not in done.stderr
