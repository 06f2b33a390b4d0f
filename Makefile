# cassette — the entry points a person types.
#
#   make demo    the seed's story end to end on a local one-node cluster (needs root)
#   make test    unit tests and end-to-end tests on a real kube-apiserver + etcd
#   make lint    rustfmt, clippy (warnings denied), cargo-deny
#   make crds    regenerate crds/ from api/ (and the chart's copy)
#   make chart   copy the CRD into the chart and lint it
#
# Everything the tests need is installed or built by these targets; slow builds are cached
# under ~/.cache/cassette (kube-apiserver, etcd, the node's components) and in target/.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: fuzz all build test unit e2e demo crds lint fmt deps controlplane node clean bench bench-recording bench-proxy bench-masking

all: build

build:
	$(CARGO) build --workspace --all-targets

## deps: the tools the tests call, installed if missing (fresh machines).
deps:
	@bash scripts/deps.sh

## controlplane: build kube-apiserver and etcd from their Go modules, once per version.
controlplane:
	@bash e2e/controlplane/build.sh >/dev/null

## node: the real node's components (kubelet, kube-proxy, kube-scheduler,
## kube-controller-manager from the same module as kube-apiserver; CoreDNS), once per version,
## and its images (pause, agent, coding-agent) from docker/ with buildah on a debootstrapped
## base, by content.
node: controlplane
	@bash e2e/controlplane/build.sh --node >/dev/null
	@bash e2e/images/build.sh pause agent coding-agent >/dev/null

# The binaries the e2e tests run are built one package at a time, as the tests build them
# (cassette_e2e::workspace_binary): building them together unifies features differently and
# would make the tests build them again.
test: deps controlplane node
	for bin in cassette-sidecar cassette-operator kubectl-cassette; do $(CARGO) build -p $$bin --bin $$bin || exit 1; done
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --exclude cassette-e2e

e2e: deps controlplane node
	$(CARGO) test -p cassette-e2e --no-fail-fast

demo: deps controlplane node
	$(CARGO) build -q -p cassette-sidecar -p cassette-operator -p kubectl-cassette
	$(CARGO) run -q -p cassette-e2e -- demo

## fuzz: each fuzz target of cassette-rules (masker, git pkt-lines, classifier, git packs) for
## FUZZ_SECONDS each, with cargo-fuzz on the nightly toolchain.
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd rules && for target in mask pkt_line classify pack; do \
	  cargo +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

## bench: every benchmark (results and their commands in bench/RESULTS.md).
bench: bench-recording bench-proxy bench-masking

## bench-proxy: latency, throughput and memory of the sidecar beside a direct connection,
## nginx and mitmproxy (bench/proxy/peers.sh installs the peers once and prints their flags).
bench-proxy:
	$(CARGO) build --release -q -p cassette-sidecar -p cassette-bench-proxy
	target/release/bench-proxy --sidecar target/release/cassette-sidecar --seconds 5 --connections 4 $$(bash bench/proxy/peers.sh)

## bench-masking: masking MB/s on JSON responses, git pushes, binary objects and logs.
bench-masking:
	$(CARGO) run --release -q -p cassette-bench-masking

## bench-recording: records/s and MB/s through the recording path and verify (bench/RESULTS.md).
bench-recording:
	$(CARGO) run --release -q -p cassette-bench-recording -- 200000

crds:
	$(CARGO) run -q -p cassette-operator -- crdgen > crds/agentsession.yaml
	cp crds/agentsession.yaml charts/cassette/crds/agentsession.yaml

## chart: the chart's CRD is a copy of crds/ (one source of truth); lint with the pinned helm.
chart: controlplane
	cp crds/agentsession.yaml charts/cassette/crds/agentsession.yaml
	$$(bash e2e/controlplane/build.sh | sed -n 's/^HELM=//p') lint --strict charts/cassette

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked
	$(CARGO) deny check bans licenses sources
	@if $(CARGO) deny fetch >/dev/null 2>&1; then $(CARGO) deny check advisories; \
	 else echo "lint: advisories not checked: the RustSec database cannot be fetched from here" >&2; fi

clean:
	$(CARGO) clean
