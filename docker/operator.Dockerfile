# syntax=docker/dockerfile:1
# cassette-operator: the controller and admission webhooks, non-root, from a prebuilt binary
# and a base image given as build arguments, so the same file builds in a registry pipeline
# (distroless) and offline on a test machine (e2e/images/build.sh, a debootstrapped Debian).
# The context is the repository root (or a copy holding the binary at BINARY):
#   cargo build --release -p cassette-operator
#   docker build -f docker/operator.Dockerfile --build-arg BINARY=target/release/cassette-operator -t cassette-operator .
# The binary links glibc dynamically: build it on (or for) the base's Debian release.
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BASE}
ARG BINARY=target/release/cassette-operator
COPY ${BINARY} /usr/local/bin/cassette-operator
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/cassette-operator"]
CMD ["run"]
