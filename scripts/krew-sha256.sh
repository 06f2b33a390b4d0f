#!/usr/bin/env bash
# Writes the sha256 of each release archive in DIR into plugins/cassette.yaml, beside the
# platform whose uri names it. Run at release, after building the archives.
# Usage: scripts/krew-sha256.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/krew-sha256.sh DIR-WITH-ARCHIVES}
manifest="$(dirname "$0")/../plugins/cassette.yaml"
found=0
for archive in "$dir"/kubectl-cassette-v*-*.tar.gz; do
  [ -e "$archive" ] || continue
  name=$(basename "$archive")
  grep -q "uri: .*/$name\$" "$manifest" || { echo "no platform in $manifest names $name" >&2; exit 1; }
  sum=$(sha256sum "$archive" | cut -d' ' -f1)
  sed -i "\#uri: .*/$name\$#{n;s/sha256: .*/sha256: $sum/}" "$manifest"
  echo "$name $sum"
  found=$((found + 1))
done
[ "$found" -gt 0 ] || { echo "no kubectl-cassette-v*-*.tar.gz in $dir" >&2; exit 1; }
