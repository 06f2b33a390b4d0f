# syntax=docker/dockerfile:1
# The pod sandbox ("pause") image of the test node: anything whose entrypoint sleeps works.
# The node's containerd names it as its sandbox_image (e2e/src/node.rs); no registry needed.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ENTRYPOINT ["/bin/sleep", "infinity"]
