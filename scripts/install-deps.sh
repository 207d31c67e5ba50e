#!/usr/bin/env bash
# Installs the Debian 12 packages that outboxd's build, tests and demo need, and only
# those that are missing. Safe to run again: with everything present it does nothing.
# With arguments it installs those packages instead (the targets that need more than
# `make test` does: make deb, make test-deb).
set -euo pipefail

packages=(
  gcc libc6-dev make pkg-config       # compiler and build (gcc brings ASan/UBSan)
  libpq-dev libhiredis-dev libevent-dev libcmocka-dev
  postgresql redis-server redis-tools # servers for tests and the demo
  procps iproute2 curl                # pkill/ps, ss, and an HTTP client for tests
  chromium                            # headless browser test of the viewer page
  pgbouncer                           # test: the relay refuses transaction pooling
  man-db jq                           # tests: the man page renders cleanly; the Grafana dashboard's queries
  dpkg-dev debhelper lintian          # test: make deb builds the package, lintian checks it
)
[[ $# -gt 0 ]] && packages=("$@")

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# Package post-install scripts try to start the servers as system services; the
# project never uses those (it starts its own in temporary directories).
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
