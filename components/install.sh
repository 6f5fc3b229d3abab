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
echo "voicebot: installing $want into $venv"
python3 -m venv "$venv"
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$here/$req"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --force-reinstall \
  "$here"/wheels/voicebot-*.whl
"$venv/bin/python" -c "import voicebot.edge.audio" # fails here, not at Run, if a native library is missing
printf '%s\n' "$want" > "$stamp"
echo "voicebot: installed $want"
