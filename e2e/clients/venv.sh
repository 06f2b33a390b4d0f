#!/usr/bin/env bash
# Creates the Python virtual environment the e2e tests run agent-side clients from, once per
# requirements.txt, and prints its python. The agent runs as UID 1000, so the venv is made
# from /usr/bin/python3 (root's pyenv Python is not executable by other users) in a
# world-readable place, not under /root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${CASSETTE_VENV:-/var/cache/cassette/venv}"
requirements="$here/requirements.txt"
stamp="$venv/.cassette-requirements"

umask 022
mkdir -p "$(dirname "$venv")"
# Two test binaries may arrive at once: one installs, the other waits.
exec 9>"$(dirname "$venv")/.venv.lock"
flock 9

if [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$stamp"; then
  echo "$venv/bin/python"
  exit 0
fi

[ -x /usr/bin/python3 ] || { echo "venv.sh: /usr/bin/python3 is required (apt-get install python3 python3-venv)" >&2; exit 1; }
echo "venv.sh: installing the e2e Python clients into $venv (once)" >&2
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements" >&2
cp "$requirements" "$stamp"
chmod -R a+rX "$venv"
echo "$venv/bin/python"
