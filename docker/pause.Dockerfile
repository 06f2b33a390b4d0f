# syntax=docker/dockerfile:1
# The pod sandbox ("pause") image of the test node: anything whose entrypoint sleeps works.
# The node's containerd names it as its sandbox_image (e2e/src/node.rs); no registry needed.
# Only sleep and the libraries it loads, so it is small and has no shell.
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS tools
COPY docker/rootfs-of.sh /rootfs-of.sh
RUN sh /rootfs-of.sh /out /usr/bin/sleep

FROM scratch
COPY --from=tools /out/ /
ENTRYPOINT ["/usr/bin/sleep", "infinity"]
