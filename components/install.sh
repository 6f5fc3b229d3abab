#!/bin/sh
# Install step of both voicebot components: install.sh VENV
#
# The nucleus runs Install at every start of the component, online or not. So the work is done once per artifact:
# the venv keeps a stamp naming the artifact's build id, and a start with a matching stamp returns at once, without
# asking any package index. A new artifact (another version, other code or other pinned requirements) installs again
# into the same venv, and always replaces the voicebot package, even when the version number did not change.
#
# Dependencies come hash-pinned from requirements.txt (requirements-vosk.txt when VOICEBOT_STT=vosk); voicebot itself
# comes from the wheel inside the artifact, never from an index.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:?usage: install.sh VENV}
req=requirements.txt
if [ "${VOICEBOT_STT:-}" = vosk ] && [ -f "$here/requirements-vosk.txt" ]; then req=requirements-vosk.txt; fi
want="$(cat "$here/build-id") $req"
stamp="$venv/voicebot-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "voicebot: $want is installed"
  exit 0
fi
# The native libraries the Python packages load at Run (PortAudio for sounddevice; libatomic for Vosk's libvosk.so):
# missing, Install fails here with the apt line, instead of the component failing at every start.
missing=""
python3 -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('portaudio') else 1)" \
  || missing="$missing libportaudio2"
if [ "$req" = requirements-vosk.txt ]; then
  python3 -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('atomic') else 1)" \
    || missing="$missing libatomic1"
fi
if [ -n "$missing" ]; then
  echo "voicebot: missing system libraries:$missing. Install them on the device: sudo apt-get install -y$missing" >&2
  exit 1
fi
# libspeexdsp (the interpreter's linear echo filter for barge-in) is optional: without it AEC3 alone decides, slower
# where the speaker sits next to the microphone.
python3 -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('speexdsp') else 1)" \
  || echo "voicebot: libspeexdsp1 is not installed: barge-in is slower over a loud speaker (sudo apt-get install -y libspeexdsp1)" >&2
echo "voicebot: installing $want into $venv"
python3 -m venv "$venv"
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$here/$req"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --force-reinstall \
  "$here"/wheels/voicebot-*.whl
# An upgrade keeps only what this version's requirements name (switching SttBackend from vosk to transcribe frees the
# ~250 MB Vosk model): every other installed distribution is removed.
"$venv/bin/python" - "$here/$req" <<'PY'
import re
import subprocess
import sys
from importlib.metadata import distributions

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

with open(sys.argv[1], encoding="utf-8") as f:
    wanted = {norm(re.split(r"[=<>!~; \[]", line.strip())[0]) for line in f
              if line.strip() and not line.lstrip().startswith(("#", "-"))}
keep = wanted | {"voicebot", "pip", "setuptools", "wheel"}
stale = sorted({norm(d.metadata["Name"]) for d in distributions() if d.metadata["Name"]} - keep)
if stale:
    print("voicebot: removing packages this version does not use:", " ".join(stale), flush=True)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "--disable-pip-version-check",
                    *stale], check=True)
PY
"$venv/bin/python" -c "import voicebot.edge.audio, sounddevice" # fails here, not at Run, if a library is missing
printf '%s\n' "$want" > "$stamp"
echo "voicebot: installed $want"
