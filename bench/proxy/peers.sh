#!/usr/bin/env bash
# Installs the peers bench-proxy measures the sidecar against, once, and prints them as
# bench-proxy arguments (`--nginx=PATH`, `--mitmdump=PATH`), one a line. A peer that cannot be
# installed is left out with a warning on stderr; the bench then reports it as not available
# instead of failing. Safe to rerun: on a machine that has them it only checks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${CASSETTE_MITMPROXY_VENV:-/var/cache/cassette/mitmproxy}"
requirements="$here/peers-requirements.txt"
stamp="$venv/.cassette-requirements"

# nginx from Debian: the plain TLS-terminating reverse proxy, no recording. The package's
# service is not started (the bench runs its own nginx from a generated config).
nginx="$(command -v nginx || true)"
[ -n "$nginx" ] || { [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx; }
if [ -z "$nginx" ]; then
  echo "peers.sh: installing nginx-light (once)" >&2
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1; }; then
    nginx=/usr/sbin/nginx
  else
    echo "peers.sh: could not install nginx-light; the nginx row will say so" >&2
  fi
fi
[ -n "$nginx" ] && echo "--nginx=$nginx"

# mitmproxy from PyPI, in its own venv beside the e2e one, once per peers-requirements.txt.
umask 022
mkdir -p "$(dirname "$venv")"
exec 9>"$(dirname "$venv")/.mitmproxy.lock"
flock 9
if ! { [ -x "$venv/bin/mitmdump" ] && cmp -s "$requirements" "$stamp"; }; then
  echo "peers.sh: installing mitmproxy into $venv (once)" >&2
  rm -rf "$venv"
  if /usr/bin/python3 -m venv "$venv" >&2 \
    && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      -r "$requirements" >&2; then
    cp "$requirements" "$stamp"
    chmod -R a+rX "$venv"
  else
    echo "peers.sh: could not install mitmproxy; the mitmproxy row will say so" >&2
    rm -rf "$venv"
  fi
fi
[ -x "$venv/bin/mitmdump" ] && echo "--mitmdump=$venv/bin/mitmdump"
exit 0
