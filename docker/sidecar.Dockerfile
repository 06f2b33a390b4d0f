# syntax=docker/dockerfile:1
# cassette-sidecar: the recorder (`run`, UID 1337) and the capture-rule installer (`init`, run
# as root with NET_ADMIN/NET_RAW by the injected cassette-init container). `init` calls
# iptables, ip6tables (nft backend) and ip; the image holds exactly those, their libraries and
# xtables extensions, the CA bundle and the binary — no shell, no package manager.
#
# It is built from a prebuilt binary and a Debian base given as build arguments, so the same
# file builds in a registry pipeline and offline on a test machine (e2e/images/build.sh). The
# context is the repository root (or a copy holding docker/ and the binary at BINARY):
#   cargo build --release -p cassette-sidecar
#   docker build -f docker/sidecar.Dockerfile --build-arg BINARY=target/release/cassette-sidecar -t cassette-sidecar .
# The binary links glibc dynamically: build it on (or for) the base's Debian release.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS tools
ARG BINARY=target/release/cassette-sidecar
# A base made by e2e/images/base.sh has the tools already; a stock debian image gets them here.
RUN command -v iptables-nft >/dev/null && command -v ip >/dev/null && [ -s /etc/ssl/certs/ca-certificates.crt ] \
 || (apt-get update && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
     && rm -rf /var/lib/apt/lists/*)
COPY ${BINARY} /usr/local/bin/cassette-sidecar
COPY docker/rootfs-of.sh /rootfs-of.sh
RUN sh /rootfs-of.sh /out /usr/local/bin/cassette-sidecar \
      /usr/sbin/xtables-nft-multi /usr/bin/ip \
 && for tool in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do \
      ln -s xtables-nft-multi /out/usr/sbin/$tool; done \
 && mkdir -p /out/usr/lib/x86_64-linux-gnu \
 && cp -a /usr/lib/x86_64-linux-gnu/xtables /out/usr/lib/x86_64-linux-gnu/ \
 && mkdir -p /out/etc/ssl/certs /out/tmp && chmod 1777 /out/tmp \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
 && cp /etc/protocols /etc/services /etc/ethertypes /out/etc/ 2>/dev/null; \
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\ncassette:x:1337:1337::/nonexistent:/usr/sbin/nologin\n' >/out/etc/passwd \
 && printf 'root:x:0:\ncassette:x:1337:\n' >/out/etc/group \
 && test ! -e /out/bin/sh && test ! -e /out/usr/bin/sh

FROM scratch
COPY --from=tools /out/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin
# The UID the capture rules exempt; the injector sets it too (runAsUser: 1337).
USER 1337:1337
EXPOSE 15001 15080 15090
ENTRYPOINT ["/usr/local/bin/cassette-sidecar"]
CMD ["run"]
