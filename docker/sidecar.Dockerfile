# syntax=docker/dockerfile:1
# cassette-sidecar: the recorder (`run`, UID 1337) and the capture-rule installer (`init`, run
# as root with NET_ADMIN/NET_RAW by the injected cassette-init container). `init` calls
# iptables, ip6tables and ip, so this image is a minimal Debian with exactly those (nft
# backend) and the CA certificates that go into the agent's bundle; nothing else, no shell use.
# Build from the repository root:  docker build -f docker/sidecar.Dockerfile -t cassette-sidecar .
FROM rust:1.91-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --target x86_64-unknown-linux-musl -p cassette-sidecar \
 && cp target/x86_64-unknown-linux-musl/release/cassette-sidecar /cassette-sidecar

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* \
 && update-alternatives --set iptables /usr/sbin/iptables-nft \
 && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft \
 && groupadd --gid 1337 cassette \
 && useradd --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin cassette
COPY --from=build /cassette-sidecar /usr/local/bin/cassette-sidecar
# The UID the capture rules exempt; the injector sets it too (runAsUser: 1337).
USER 1337:1337
EXPOSE 15001 15080 15090
ENTRYPOINT ["/usr/local/bin/cassette-sidecar"]
CMD ["run"]
