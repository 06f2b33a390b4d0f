#!/usr/bin/env bash
# Installs har-validator (pinned by package-lock.json) once per lock file, into a cache any
# UID can read, and prints its node_modules directory. Needs node and npm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${CASSETTE_HAR_CHECK:-/var/cache/cassette/har-check}"
stamp="$dest/.cassette-lock"

command -v npm >/dev/null || { echo "har install.sh: node and npm are required (apt-get install nodejs npm)" >&2; exit 1; }
umask 022
mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9
if [ -d "$dest/node_modules/har-validator" ] && cmp -s "$here/package-lock.json" "$stamp"; then
  echo "$dest/node_modules"
  exit 0
fi
echo "har install.sh: installing har-validator into $dest (once)" >&2
cp "$here/package.json" "$here/package-lock.json" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --silent >&2)
cp "$here/package-lock.json" "$stamp"
echo "$dest/node_modules"
