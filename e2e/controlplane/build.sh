#!/usr/bin/env bash
# Builds kube-apiserver, etcd and helm from their Go modules (pinned in ./kube-apiserver/go.mod,
# ./etcd/go.mod and ./helm/go.mod) into the cache, once per version. Prints the binary paths as
# KUBE_APISERVER=…, ETCD=… and HELM=… lines for the harness to read.
set -euo pipefail

KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.4
HELM_VERSION=v3.22.0 # must match the tool's version in helm/go.mod

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${CASSETTE_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cassette/bin}
mkdir -p "$bin_dir"

kube_apiserver=$bin_dir/kube-apiserver-$KUBE_VERSION
etcd=$bin_dir/etcd-$ETCD_VERSION
helm=$bin_dir/helm-$HELM_VERSION

build() { # build OUT MODULE_DIR PACKAGE LDFLAGS
  local out=$1 dir=$2 pkg=$3 ldflags=$4
  [ -x "$out" ] && return 0
  echo "building $(basename "$out") from $pkg (first run only; a few minutes)" >&2
  # Write to a temporary name so an interrupted build never leaves a broken binary behind.
  (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg") >&2
  mv "$out.tmp" "$out"
}

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
build "$kube_apiserver" "$here/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
  "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
build "$etcd" "$here/etcd" go.etcd.io/etcd/server/v3 \
  "-s -w"
build "$helm" "$here/helm" helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

echo "KUBE_APISERVER=$kube_apiserver"
echo "ETCD=$etcd"
echo "HELM=$helm"
