#!/usr/bin/env bash
# make test-deb: the Debian package on a clean Debian 12, as an admin would meet it.
# Builds the package twice (this tree, and the same tree as a newer version), makes a
# bare bookworm root with mmdebstrap (from the mirror this machine's apt uses), and in
# that root checks that:
#   - `apt-get install ./outboxd_*.deb` pulls the libraries it needs; --version, the
#     outboxd user, the private conffile, no unit enabled; remove keeps the
#     configuration and the user, purge (and autoremove) leaves the root as it was;
#   - with man-db, systemd, PostgreSQL and Redis added: `man -w outboxd` finds the page
#     and it shows every setting; `systemd-analyze verify` accepts both units; the
#     relay's and the gateway's unit command lines (ExecStartPre, ExecStart, User=,
#     EnvironmentFile=) run against a PostgreSQL and Redis started in that root: READY=1
#     on NOTIFY_SOCKET, events published in order to Redis and marked, streamed over
#     SSE, /metrics served, exit 0 on SIGTERM; upgrading to the newer build keeps the
#     edited /etc/outboxd/outboxd.env; purge leaves nothing of ours;
#   - the extension's package postgresql-15-outboxd installs, CREATE EXTENSION outboxd
#     works, the relay unit's migrate then installs the C seq trigger, and events
#     written with it are published in order.
# Takes several minutes, so it is not part of make test. Needs root (mounts, chroot);
# runs in its own mount, PID and network namespaces, so that whatever it starts ends
# with it. KEEP=1 keeps the work directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[[ $(id -u) -eq 0 ]] || exec sudo -E bash "$0" "$@"
t_start=$(date +%s)

say() { printf '[test-deb %4ds] %s\n' $(($(date +%s) - t_start)) "$*"; }
fail() { printf '[test-deb %4ds] FAIL: %s\n' $(($(date +%s) - t_start)) "$*" >&2; exit 1; }

bash scripts/install-deps.sh mmdebstrap iproute2 util-linux
BUILD=${BUILD:-build}
[[ "$BUILD" = /* ]] || BUILD="$root/$BUILD"
work=$(mktemp -d /tmp/outboxd-test-deb.XXXXXX)
# --one-file-system: should a mount of the root outlive its namespace, never delete
# through it into /dev or /sys.
trap 'rc=$?; [[ -n "${KEEP:-}" ]] && echo "kept $work" || rm -rf --one-file-system "$work"; exit $rc' EXIT

# The two builds. The second differs only in its version, as a rebuild of a newer
# release would: the packaged environment file is the same, so an edited one is kept
# without a question.
read -r v1 commit < <(sh scripts/version.sh)
v2="$v1.1"
for v in "$v1" "$v2"; do
  make --no-print-directory BUILD="$work/build-$v" VERSION="$v" COMMIT="$commit" deb >"$work/deb-$v.log" 2>&1 ||
    fail "make deb VERSION=$v: $(tail -20 "$work/deb-$v.log")"
done
arch=$(dpkg --print-architecture)
deb1="$work/build-$v1/deb/outboxd_${v1}_$arch.deb"
deb2="$work/build-$v2/deb/outboxd_${v2}_$arch.deb"
ext1="$work/build-$v1/deb/postgresql-15-outboxd_${v1}_$arch.deb"
[[ -f "$deb1" && -f "$deb2" && -f "$ext1" ]] || fail "make deb did not produce $deb1, $deb2 and $ext1"
say "built outboxd $v1 and $v2 (commit $commit)"

# This machine's Debian 12 sources (deb822 or one-line files), else Debian's default.
mirrors=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -f "$f" ]] && grep -qE '^[^#]*bookworm' "$f" && grep -qE '^[^#]*(URIs:|deb ) *[^ ]*/debian' "$f" && mirrors+=("$f")
done
[[ ${#mirrors[@]} -gt 0 ]] || mirrors=(http://deb.debian.org/debian)
# The bare root is built once and kept as a tarball (make clean removes it); each run
# starts from a fresh copy of it.
base="$BUILD/test-deb/bookworm-apt-$(cat "${mirrors[@]}" 2>/dev/null | sha256sum | cut -c1-12).tar"
find "$(dirname "$base")" -name 'bookworm-apt-*.tar' -mtime +7 -delete 2>/dev/null || true
if [[ ! -f "$base" ]]; then
  say "mmdebstrap: a bare bookworm root (variant apt) from ${mirrors[*]}"
  mkdir -p "$(dirname "$base")"
  mmdebstrap --quiet --mode=root --variant=apt --format=tar bookworm "$base.tmp" "${mirrors[@]}" ||
    fail "mmdebstrap failed"
  mv "$base.tmp" "$base"
fi
say "bare root: $(basename "$base")"

R="$work/root"
mkdir -p "$R"
tar -C "$R" -xf "$base"
cp /etc/resolv.conf "$R/etc/resolv.conf"
# Package scripts start no services in this root; the test starts what it needs.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
export R work deb1 deb2 ext1 v1 v2 commit t_start

timeout -k 10 1800 unshare --mount --pid --fork --kill-child --mount-proc --propagation private \
  bash "$root/tests/deb/in-root.sh"
say "passed in $(($(date +%s) - t_start)) s"
