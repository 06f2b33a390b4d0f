# syntax=docker/dockerfile:1
# cassette-operator: a static (musl) binary on distroless/static, non-root.
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t cassette-operator .
FROM rust:1.91-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --target x86_64-unknown-linux-musl -p cassette-operator \
 && cp target/x86_64-unknown-linux-musl/release/cassette-operator /cassette-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /cassette-operator /usr/local/bin/cassette-operator
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/cassette-operator"]
CMD ["run"]
