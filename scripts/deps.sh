#!/usr/bin/env bash
# Installs the tools cassette's tests and demo call, when they are missing. Safe to rerun:
# on a machine that has them it only checks.
set -euo pipefail

need_apt=()
command -v go >/dev/null || { echo "deps: Go is required to build kube-apiserver and etcd (https://go.dev/dl)" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "deps: kubectl is required (it ships with the Google Cloud SDK: apt-get install kubectl)" >&2; exit 1; }
for tool in jq zstd curl git; do
  command -v "$tool" >/dev/null || need_apt+=("$tool")
done
# The network-namespace e2e tests: ip netns and veth, iptables (the sidecar's capture rules),
# setpriv to run the agent as another UID, and a system python3 that can make a venv.
command -v ip >/dev/null || need_apt+=(iproute2)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v setpriv >/dev/null || need_apt+=(util-linux)
# The DNS attacks of the sidecar e2e run the tool an attacker would.
command -v dig >/dev/null || need_apt+=(bind9-dnsutils)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3 python3-venv)
# The real node: containerd (CRI) + runc + CNI plugins, and buildah + debootstrap to make its
# images without a registry.
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v buildah >/dev/null || need_apt+=(buildah)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v npm >/dev/null || need_apt+=(nodejs npm)
pubsub_emulator="${CLOUDSDK_ROOT:-/usr/lib/google-cloud-sdk}/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
[ -x "$pubsub_emulator" ] || { echo "deps: the Pub/Sub emulator is required at $pubsub_emulator (it ships with the Google Cloud SDK: apt-get install google-cloud-cli-pubsub-emulator)" >&2; exit 1; }

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Built or downloaded once, then cached: fake-gcs-server (Go module) and the agent-side Python
# clients (a venv under /var/cache/cassette that any UID can run).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/../recording/tests/fake-gcs.sh" >/dev/null
bash "$here/../e2e/clients/venv.sh" >/dev/null
# The HAR schema check of `kubectl cassette export --har` (har-validator from npm).
bash "$here/../cli/tests/har/install.sh" >/dev/null
