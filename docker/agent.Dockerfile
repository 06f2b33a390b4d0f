# syntax=docker/dockerfile:1
# The agent image of the end-to-end tests and the demo: the tools an agent's workload calls
# (curl, git, python3, dig), on a Debian base given as a build argument
# (e2e/images/build.sh passes a debootstrapped one that has them already).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN command -v curl >/dev/null && command -v git >/dev/null && command -v python3 >/dev/null && command -v dig >/dev/null \
 || (apt-get update && apt-get install -y --no-install-recommends curl git python3 dnsutils ca-certificates \
     && rm -rf /var/lib/apt/lists/*)
RUN groupadd --gid 1000 agent && useradd --uid 1000 --gid 1000 --create-home agent
WORKDIR /home/agent
USER 1000:1000
CMD ["sleep", "infinity"]
