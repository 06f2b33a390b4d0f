# syntax=docker/dockerfile:1
# kubectl-cassette: the auditor's plugin as a static (musl) binary on distroless/static, for CI
# jobs that verify recordings. Build from the repository root:
#   docker build -f docker/cli.Dockerfile -t kubectl-cassette .
FROM rust:1.91-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --target x86_64-unknown-linux-musl -p kubectl-cassette \
 && cp target/x86_64-unknown-linux-musl/release/kubectl-cassette /kubectl-cassette

# The static image carries CA certificates, which reading gs:// recordings needs.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kubectl-cassette /usr/local/bin/kubectl-cassette
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-cassette"]
