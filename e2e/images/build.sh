#!/usr/bin/env bash
# Builds the images the test node runs from docker/*.Dockerfile, offline: buildah (vfs storage,
# chroot isolation, its own storage under the cache) on a Debian base from ./base.sh, each
# written as an OCI archive cached by a hash of everything that goes into it (Dockerfile,
# helper scripts, binary, base). Usage:
#   e2e/images/build.sh pause agent [coding-agent] [sidecar=PATH] [operator=PATH]
# Prints, for each image, NAME_IMAGE=<reference> and NAME_ARCHIVE=<oci archive> lines; load an
# archive into a containerd with `ctr -n k8s.io images import`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CASSETTE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cassette}/images
mkdir -p "$cache"
# One build at a time across test binaries (buildah locks its storage too; this keeps the
# cache check and the build together).
exec 9>"$cache/build.lock"
flock 9

base_tar=$(bash "$here/base.sh" | sed -n 's/^BASE_TAR=//p')
base_key=$(basename "$base_tar" .tar); base_key=${base_key##*-}
bh=(buildah --root "$cache/buildah/storage" --runroot "$cache/buildah/run" --storage-driver vfs)
base_ref=cassette.test/base:$base_key

ensure_base() {
  "${bh[@]}" inspect --type image "$base_ref" >/dev/null 2>&1 && return 0
  echo "images: importing the base rootfs as $base_ref" >&2
  local ctr
  ctr=$("${bh[@]}" from --pull=never scratch)
  "${bh[@]}" add "$ctr" "$base_tar" / >/dev/null
  "${bh[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  "${bh[@]}" commit --quiet --rm "$ctr" "$base_ref" >/dev/null
}

for spec in "$@"; do
  name=${spec%%=*}
  binary=
  [ "$spec" != "$name" ] && binary=${spec#*=}
  dockerfile=$repo/docker/$name.Dockerfile
  [ -f "$dockerfile" ] || { echo "images: no $dockerfile" >&2; exit 1; }
  ctx=$(mktemp -d "$cache/ctx.XXXXXX")
  mkdir -p "$ctx/docker"
  cp "$repo"/docker/*.sh "$ctx/docker/"
  args=(--build-arg "BASE=$base_ref")
  if [ -n "$binary" ]; then
    [ -x "$binary" ] || { echo "images: $name's binary $binary is missing" >&2; exit 1; }
    mkdir -p "$ctx/bin"
    cp "$binary" "$ctx/bin/"
    args+=(--build-arg "BINARY=bin/$(basename "$binary")")
  fi
  # The coding agent carries the host's gofmt and the part of its Cloud SDK gcloud runs from;
  # the SDK (~550 MB) is keyed by its file list and copied only when the image is built.
  sdk_key=
  if [ "$name" = coding-agent ]; then
    sdk=${CLOUDSDK_ROOT:-/usr/lib/google-cloud-sdk}
    gofmt=$(command -v gofmt || echo /usr/local/go/bin/gofmt)
    [ -x "$sdk/bin/gcloud" ] && [ -d "$sdk/lib" ] || { echo "images: no Cloud SDK at $sdk (set CLOUDSDK_ROOT)" >&2; exit 1; }
    [ -x "$gofmt" ] || { echo "images: no gofmt (install Go)" >&2; exit 1; }
    mkdir -p "$ctx/bin"
    cp "$gofmt" "$ctx/bin/gofmt"
    sdk_key=$(cd "$sdk" && { cat VERSION; find lib bin/gcloud -type f -printf '%P %s %T@\n' | sort; } | sha256sum | cut -c1-16)
  fi
  key=$( (echo "$base_key"; echo "$sdk_key"; cat "$dockerfile"; cd "$ctx" && find . -type f | sort | xargs sha256sum) | sha256sum | cut -c1-16)
  ref=cassette.test/$name:$key
  archive=$cache/$name-$key.oci.tar
  if [ ! -s "$archive" ]; then
    ensure_base
    if [ -n "$sdk_key" ]; then
      mkdir -p "$ctx/sdk/bin"
      cp -a "$sdk/lib" "$sdk/VERSION" "$ctx/sdk/"
      [ -e "$sdk/properties" ] && cp -a "$sdk/properties" "$ctx/sdk/"
      cp -a "$sdk/bin/gcloud" "$ctx/sdk/bin/"
    fi
    started=$(date +%s)
    echo "images: building $ref from docker/$name.Dockerfile" >&2
    "${bh[@]}" bud --quiet --isolation chroot --pull=never --layers=false "${args[@]}" \
      -f "$dockerfile" -t "$ref" "$ctx" >"$ctx/build.log" 2>&1 || { tail -30 "$ctx/build.log" >&2; exit 1; }
    "${bh[@]}" push --quiet "$ref" "oci-archive:$archive.tmp:$ref" >&2
    "${bh[@]}" rmi "$ref" >/dev/null 2>&1 || true
    mv "$archive.tmp" "$archive"
    echo "images: $ref in $(( $(date +%s) - started ))s" >&2
  fi
  rm -rf "$ctx"
  # Keep the cache from growing with every binary: archives of this image unused for 3 days go.
  touch "$archive"
  find "$cache" -maxdepth 1 -name "$name-*.oci.tar" -mtime +3 -delete
  var=${name^^}; var=${var//-/_}
  echo "${var}_IMAGE=$ref"
  echo "${var}_ARCHIVE=$archive"
done
