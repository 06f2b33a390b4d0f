#!/usr/bin/env bash
# Builds kube-apiserver, etcd and helm from their Go modules (pinned in ./kube-apiserver/go.mod,
# ./etcd/go.mod and ./helm/go.mod) into the cache, once per version. Prints the binary paths as
# KUBE_APISERVER=…, ETCD=… and HELM=… lines for the harness to read.
#
# With --node it also builds the node's components: kubelet, kube-proxy, kube-scheduler and
# kube-controller-manager from the same k8s.io/kubernetes module as kube-apiserver (so each
# reuses its compiled packages: ~50 s apiece after kube-apiserver), and CoreDNS from
# ./coredns/go.mod; printed as KUBELET=…, KUBE_PROXY=…, KUBE_SCHEDULER=…,
# KUBE_CONTROLLER_MANAGER=… and COREDNS=….
set -euo pipefail

node=false
[ "${1:-}" = --node ] && node=true

KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.4
HELM_VERSION=v3.22.0 # must match the tool's version in helm/go.mod
COREDNS_VERSION=v1.14.0 # must match the tool's version in coredns/go.mod

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
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
build "$kube_apiserver" "$here/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build "$etcd" "$here/etcd" go.etcd.io/etcd/server/v3 \
  "-s -w"
build "$helm" "$here/helm" helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

echo "KUBE_APISERVER=$kube_apiserver"
echo "ETCD=$etcd"
echo "HELM=$helm"

if $node; then
  for component in kubelet kube-proxy kube-scheduler kube-controller-manager; do
    out=$bin_dir/$component-$KUBE_VERSION
    build "$out" "$here/kube-apiserver" "k8s.io/kubernetes/cmd/$component" "$kube_ldflags"
    var=${component^^}; echo "${var//-/_}=$out"
  done
  coredns=$bin_dir/coredns-$COREDNS_VERSION
  build "$coredns" "$here/coredns" github.com/coredns/coredns "-s -w"
  echo "COREDNS=$coredns"
fi
