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

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
