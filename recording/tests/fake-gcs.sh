#!/usr/bin/env bash
# Installs fake-gcs-server (the GCS emulator the recording tests ship to) into the cassette
# cache, once per version, and prints the binary's path. v1.55+ is required: v1.54 (the one in
# the PyPI wheel) ignores ifGenerationMatch=0 on media uploads, so write-once cannot be tested.
set -euo pipefail

version="${FAKE_GCS_VERSION:-v1.56.1}"
cache="${CASSETTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cassette}/bin"
bin="$cache/fake-gcs-server-$version"

if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { echo "fake-gcs.sh: Go is required to install fake-gcs-server $version" >&2; exit 1; }
  mkdir -p "$cache"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "fake-gcs.sh: installing fake-gcs-server $version into $cache (once)" >&2
  GOBIN="$work" CGO_ENABLED=0 go install "github.com/fsouza/fake-gcs-server@$version" >&2
  mv "$work/fake-gcs-server" "$bin.tmp"
  mv "$bin.tmp" "$bin"
fi
echo "$bin"
