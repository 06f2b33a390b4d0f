#!/bin/sh
# rootfs-of.sh OUT FILE...: copy each FILE and every shared library it loads (per ldd), at
# the same paths, into OUT, with the merged-/usr symlinks (/bin, /sbin, /lib, /lib64) a
# Debian loader path needs. Used by the image builds to make images without a shell.
set -eu
out=$1; shift
mkdir -p "$out/usr/bin" "$out/usr/sbin" "$out/usr/lib" "$out/usr/lib64"
for link in bin sbin lib lib64; do
  [ -L "/$link" ] && cp -a "/$link" "$out/"
done
copy() { mkdir -p "$out$(dirname "$1")"; cp -L "$1" "$out$1"; }
for file in "$@"; do
  copy "$file"
  ldd "$file" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}' | while read -r lib; do
    [ -e "$out$lib" ] || copy "$lib"
  done
done
