#!/usr/bin/env bash
# Installs the Debian 12 packages that outboxd's build, tests and demo need, and only
# those that are missing. Safe to run again: with everything present it does nothing.
# With arguments it installs those packages instead (the targets that need more than
# `make test` does: make deb, make test-deb).
set -euo pipefail

packages=(
  gcc libc6-dev make pkg-config       # compiler and build (gcc brings ASan/UBSan)
  libpq-dev libhiredis-dev libevent-dev libcmocka-dev
  libssl-dev libjansson-dev           # OpenSSL 3 (TLS to Redis, token signatures) and jansson (JSON)
  openssl                             # the CLI makes test keys and certificates
  postgresql redis-server redis-tools # servers for tests and the demo
  postgresql-server-dev-15            # PGXS: builds the extension outboxd (pgext/, the seq trigger in C)
  procps iproute2 curl                # pkill/ps, ss, and an HTTP client for tests
  chromium                            # headless browser test of the viewer page
  pgbouncer                           # test: the relay refuses transaction pooling
  man-db jq                           # tests: the man page renders cleanly; the Grafana dashboard's queries
  dpkg-dev debhelper lintian          # test: make deb builds the package, lintian checks it
)
custom=$#
[[ $# -gt 0 ]] && packages=("$@")

# Node.js and npm run an independent JOSE implementation (npm jose, pinned in
# tests/jose/package-lock.json) that mints the tokens the authorization tests use.
# Checked by command: a machine may have them from another source than Debian.
if [[ $custom -eq 0 ]]; then
  command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
install_jose() {
  [[ $custom -eq 0 ]] || return 0
  local here
  here=$(cd "$(dirname "$0")/.." && pwd)/tests/jose
  [[ -d "$here/node_modules/jose" ]] && return 0
  echo "install-deps: installing npm jose for the authorization tests"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}
if [[ ${#missing[@]} -eq 0 ]]; then
  install_jose
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# Package post-install scripts try to start the servers as system services; the
# project never uses those (it starts its own in temporary directories).
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_jose
