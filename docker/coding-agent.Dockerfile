# syntax=docker/dockerfile:1
# The coding agent of the seed's story (the full loop and `make demo`): the agent image's tools
# (curl, git, python3, dig) plus gofmt and the Cloud SDK's gcloud, as a coding agent's image
# carries them. The context holds them prebuilt, so the same file builds in a registry
# pipeline and offline (e2e/images/build.sh copies the host's gofmt and the part of its Cloud
# SDK that gcloud runs from: bin/gcloud, lib/, VERSION, properties):
#   context/bin/gofmt   a gofmt binary
#   context/sdk/        a google-cloud-sdk directory
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN command -v curl >/dev/null && command -v git >/dev/null && command -v python3 >/dev/null && command -v dig >/dev/null \
 || (apt-get update && apt-get install -y --no-install-recommends curl git python3 dnsutils ca-certificates \
     && rm -rf /var/lib/apt/lists/*)
COPY sdk/ /usr/lib/google-cloud-sdk/
COPY bin/gofmt /usr/local/go/bin/gofmt
RUN ln -s /usr/lib/google-cloud-sdk/bin/gcloud /usr/bin/gcloud \
 && gcloud --version >/dev/null \
 && groupadd --gid 1000 agent && useradd --uid 1000 --gid 1000 --create-home agent
ENV PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /home/agent
USER 1000:1000
CMD ["sleep", "infinity"]
