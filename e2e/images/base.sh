#!/usr/bin/env bash
# A Debian root filesystem for the images the node runs, made with debootstrap from Debian's
# mirror (no container registry is reachable here), as a tarball cached by what goes into it.
# Prints BASE_TAR=<path>. The package list is the union of what the images need: the sidecar
# image copies out only iptables, ip and the CA bundle; the agent image keeps the tools.
set -euo pipefail

suite=bookworm
mirror=${CASSETTE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=iptables,iproute2,ca-certificates,curl,git,python3,dnsutils
cache=${CASSETTE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cassette}/images
mkdir -p "$cache"

key=$(printf '%s\n' "$suite" "$mirror" "$packages" minbase | sha256sum | cut -c1-16)
tar=$cache/base-$suite-$key.tar
if [ ! -s "$tar" ]; then
  echo "images: debootstrap $suite ($packages) into a base rootfs (first run only; ~3 min)" >&2
  work=$(mktemp -d "$cache/base.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" >"$work/log" 2>&1 \
    || { tail -20 "$work/log" >&2; exit 1; }
  # Trim what no container reads: package indexes, caches, docs, logs.
  rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/* \
    "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/var/log/*
  # The nft backend, as on GKE nodes and in the sidecar's published image.
  chroot "$work/rootfs" update-alternatives --set iptables /usr/sbin/iptables-nft >/dev/null
  chroot "$work/rootfs" update-alternatives --set ip6tables /usr/sbin/ip6tables-nft >/dev/null
  tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
fi
echo "BASE_TAR=$tar"
