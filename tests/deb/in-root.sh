#!/usr/bin/env bash
# The checks of make test-deb inside the Debian 12 root $R (see test-deb.sh, which
# runs this as PID 1 of its own PID and mount namespaces: every process started here
# dies, and every mount goes, when it exits).
set -euo pipefail
: "${R:?}" "${work:?}" "${deb1:?}" "${deb2:?}" "${v1:?}" "${v2:?}" "${commit:?}" "${t_start:?}"

say() { printf '[test-deb %4ds] %s\n' $(($(date +%s) - t_start)) "$*"; }
fail() { printf '[test-deb %4ds] FAIL: %s\n' $(($(date +%s) - t_start)) "$*" >&2; exit 1; }
# in_root CMD...: CMD in the root, with a clean environment.
in_root() {
  chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
    DEBIAN_FRONTEND=noninteractive "$@"
}
apt_in_root() { # apt_in_root LOGNAME ARGS...: apt-get in the root, its output in $work/LOGNAME.log
  local log="$work/$1.log"; shift
  in_root apt-get -y -o Dpkg::Use-Pty=0 "$@" >"$log" 2>&1 || fail "apt-get $*: $(tail -15 "$log")"
}
# What is in the root, but what apt, dpkg, logs, caches and servers' data change.
snapshot() {
  (cd "$R" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./run -o -path ./tmp \
    -o -path ./var/cache -o -path ./var/lib/apt -o -path ./var/lib/dpkg -o -path ./var/log \
    -o -path ./var/lib/postgresql -o -path ./var/lib/redis -o -path ./root \) -prune -o -print | sort)
}
nothing_of_ours() { # nothing_of_ours SNAPSHOT: the root is as in SNAPSHOT, no outboxd user or group
  local f
  # The shadow tools keep a backup of each file they change (/etc/shadow- ...): the
  # system's, made by adding and deleting any user.
  snapshot >"$work/now"
  diff "$1" "$work/now" | grep -E '^[<>]' | grep -vE '^> \./etc/(passwd|group|shadow|gshadow)-$' >"$work/residue" || true
  [[ -s "$work/residue" ]] && fail "left behind: $(head -20 "$work/residue")"
  for f in passwd group shadow gshadow; do
    grep -q "^outboxd:" "$R/etc/$f" && fail "/etc/$f still has outboxd"
  done
  [[ -z $(find "$R/etc" "$R/lib/systemd" "$R/usr" "$R/var/lib/systemd" -name '*outboxd*' 2>/dev/null) ]] ||
    fail "left behind: $(find "$R/etc" "$R/lib/systemd" "$R/usr" "$R/var/lib/systemd" -name '*outboxd*' | head)"
}
installed() { [[ $(in_root dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
user_is_system() {
  local ent uid
  ent=$(in_root getent passwd outboxd) || fail "no outboxd user"
  uid=$(cut -d: -f3 <<<"$ent")
  ((uid < 1000)) || fail "outboxd is not a system user: $ent"
  [[ $(cut -d: -f7 <<<"$ent") == /usr/sbin/nologin ]] || fail "outboxd can log in: $ent"
  in_root getent group outboxd >/dev/null || fail "no outboxd group"
}
no_unit_enabled() {
  [[ -z $(find "$R/etc/systemd/system" -name 'outboxd*' 2>/dev/null) ]] ||
    fail "a unit is enabled: $(find "$R/etc/systemd/system" -name 'outboxd*')"
}
install_deb() { # install_deb DEB LOGNAME: apt-get install ./outboxd_*.deb, as the issue says
  rm -f "$R"/tmp/outboxd_*.deb
  cp "$1" "$R/tmp/"
  in_root sh -c 'cd /tmp && apt-get -y -o Dpkg::Use-Pty=0 install ./outboxd_*.deb' >"$work/$2.log" 2>&1 ||
    fail "apt-get install ./$(basename "$1"): $(tail -15 "$work/$2.log")"
  # Our maintainer scripts configure quietly: anything they print is a problem.
  awk '/^Setting up outboxd / {on = 1; next} on && /^(Setting up|Processing triggers)/ {on = 0} on' \
    "$work/$2.log" >"$work/$2.noise"
  [[ ! -s "$work/$2.noise" ]] || fail "configuring outboxd printed: $(cat "$work/$2.noise")"
}

mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount --rbind /sys "$R/sys"
mount -t tmpfs -o mode=755 tmpfs "$R/run"

# --- In the bare root: dependencies, user, conffile, remove and purge. ---
apt_in_root update update
snapshot >"$work/snap-bare"
for p in libpq5 libhiredis0.14 libevent-2.1-7 libevent-pthreads-2.1-7; do
  installed "$p" && fail "$p is in the bare root already: the test could not see apt pull it"
done
install_deb "$deb1" install-bare
for p in outboxd libpq5 libhiredis0.14 libevent-2.1-7 libevent-pthreads-2.1-7 adduser; do
  installed "$p" || fail "$p is not installed after apt-get install ./outboxd_*.deb"
done
[[ $(in_root outboxd --version) == "outboxd $v1 (commit $commit)" ]] ||
  fail "outboxd --version: '$(in_root outboxd --version)', want 'outboxd $v1 (commit $commit)'"
user_is_system
no_unit_enabled
in_root dpkg-query -W -f='${Conffiles}\n' outboxd | grep -q "^ /etc/outboxd/outboxd.env [0-9a-f]\{32\}$" ||
  fail "outboxd.env is not a conffile: $(in_root dpkg-query -W -f='${Conffiles}' outboxd)"
[[ $(stat -c '%a %U' "$R/etc/outboxd/outboxd.env") == "600 root" ]] ||
  fail "outboxd.env: $(stat -c '%a %U' "$R/etc/outboxd/outboxd.env")"
say "bare root: apt installed outboxd and its libraries; user outboxd, conffile, no unit enabled"
apt_in_root remove-bare remove outboxd
[[ -x "$R/usr/bin/outboxd" ]] && fail "remove left the binary"
[[ -f "$R/etc/outboxd/outboxd.env" ]] || fail "remove deleted the configuration"
user_is_system
apt_in_root purge-bare purge outboxd
apt_in_root autoremove-bare autoremove --purge
nothing_of_ours "$work/snap-bare"
say "bare root: remove kept configuration and user; purge and autoremove left the root as it was"

# --- With the tools an admin has, and a PostgreSQL and Redis in the root. ---
apt_in_root tools install --no-install-recommends man-db systemd postgresql redis-server curl socat procps
snapshot >"$work/snap-tools"
install_deb "$deb1" install
page=$(in_root man -w outboxd) || fail "man -w outboxd found nothing"
[[ "$page" == /usr/share/man/man1/outboxd.1.gz ]] || fail "man -w outboxd: $page"
in_root sh -c 'MANWIDTH=200 man -P cat outboxd 2>/dev/null' >"$work/man.txt"
for flag in $(in_root outboxd settings | grep -oE '^\| `--[a-z0-9-]+`' | tr -d '|` '); do
  grep -qE "^ +$flag( |$)" "$work/man.txt" || fail "man outboxd does not show $flag"
done
say "man -w outboxd: $page; it shows all $(in_root outboxd settings | grep -cE '^\| `--') settings"
in_root systemd-analyze verify /lib/systemd/system/outboxd-relay.service /lib/systemd/system/outboxd-sse.service \
  >"$work/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$work/verify.log")"
grep -i "outboxd" "$work/verify.log" && fail "systemd-analyze verify complains: $(cat "$work/verify.log")"
for u in relay sse; do
  [[ $(in_root systemctl is-enabled "outboxd-$u.service" 2>/dev/null || true) == disabled ]] ||
    fail "outboxd-$u.service is $(in_root systemctl is-enabled "outboxd-$u.service" 2>&1)"
done
say "systemd-analyze verify accepts both units; both disabled"

# A network namespace of its own: the servers take their usual ports without meeting
# anything else on this machine.
unshare --net sleep 3600 &
netns="/proc/$!/ns/net"
sleep 0.2
innet() { nsenter --net="$netns" "$@"; }
innet ip link set lo up
mkdir -p "$R/run/postgresql" "$R/run/outboxd"
in_root chown postgres:postgres /run/postgresql
innet chroot "$R" pg_ctlcluster 15 main start >"$work/pg.log" 2>&1 || fail "PostgreSQL: $(cat "$work/pg.log")"
innet chroot "$R" runuser -u postgres -- psql -qX -c "CREATE ROLE outboxd LOGIN PASSWORD 'pkg-test'" \
  -c "CREATE DATABASE app OWNER outboxd" >/dev/null || fail "could not create the database"
innet chroot "$R" runuser -u redis -- redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize yes --dir /var/lib/redis --logfile /var/lib/redis/test.log || fail "Redis did not start"
for _ in $(seq 1 100); do innet chroot "$R" redis-cli ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done

# The admin's edit of the environment file: this stack.
env_file="$R/etc/outboxd/outboxd.env"
sed -i -e 's|^DATABASE_URL=.*|DATABASE_URL=postgresql://outboxd:pkg-test@127.0.0.1:5432/app|' \
  -e 's|^REDIS_URL=.*|REDIS_URL=redis://127.0.0.1:6379/0|' -e 's|^OUTBOXD_STATS_INTERVAL=.*|OUTBOXD_STATS_INTERVAL=1s|' "$env_file"
edited=$(sha256sum <"$env_file")

# Runs a unit's command line as systemd would: its User=, its EnvironmentFile=, and
# a NOTIFY_SOCKET that a receiver in the root records.
unit_value() { sed -n "s/^$1=//p" "$R/lib/systemd/system/$2" | head -1; }
unit_env() {
  local f
  f=$(unit_value EnvironmentFile "$1")
  grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$R$f"
}
# unit_cmd UNIT KEY: the command as words, ${VAR} and $VAR taken from the environment file.
unit_cmd() {
  local line word out=()
  line=$(unit_value "$2" "$1")
  [[ -n "$line" ]] || fail "$1 has no $2="
  for word in $line; do
    if [[ $word =~ ^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$ ]]; then
      word=$(unit_env "$1" | sed -n "s/^${BASH_REMATCH[1]}=//p" | tail -1)
    fi
    out+=("$word")
  done
  printf '%s\n' "${out[@]}"
}
# unit_argv UNIT KEY [NOTIFY_SOCKET]: sets $argv to that command line, as the unit's
# user with its environment, in the test's network namespace. A plain command, so that
# `"${argv[@]}" &` gives the pid of the process itself.
unit_argv() {
  local user cmd envs
  user=$(unit_value User "$1")
  user=$(in_root id -u "$user"):$(in_root id -g "$user") # chroot(8) would look names up outside
  mapfile -t cmd < <(unit_cmd "$1" "$2")
  mapfile -t envs < <(unit_env "$1")
  argv=(nsenter --net="$netns" chroot --userspec="$user" "$R" env -i PATH=/usr/bin:/bin
    ${3:+NOTIFY_SOCKET=$3} "${envs[@]}" "${cmd[@]}")
}
wait_for() { # wait_for SECONDS FILE PATTERN
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do grep -q -- "$3" "$2" 2>/dev/null && return 0; sleep 0.1; done
  fail "'$3' did not appear in $(basename "$2") within $1 s: $(tail -5 "$2" 2>/dev/null)"
}
start_notify_receiver() { # start_notify_receiver NAME: socket /run/outboxd/NAME.sock, datagrams in $work/NAME.notify
  innet chroot "$R" socat -u "UNIX-RECV:/run/outboxd/$1.sock,mode=777" - >"$work/$1.notify" 2>&1 &
  for _ in $(seq 1 50); do [[ -S "$R/run/outboxd/$1.sock" ]] && return 0; sleep 0.05; done
  fail "the notify receiver did not start"
}
stop_unit() { # stop_unit PID NAME: SIGTERM, exit 0 with STOPPING=1 sent
  local rc=0
  kill -TERM "$1"
  timeout 35 tail --pid="$1" -f /dev/null || fail "$2 did not exit 35 s after SIGTERM"
  wait "$1" || rc=$?
  [[ $rc == 0 ]] || fail "$2 exited $rc after SIGTERM: $(tail -5 "$work/$2.log")"
  wait_for 2 "$work/$2.notify" "STOPPING=1"
}

unit_argv outboxd-relay.service ExecStartPre
"${argv[@]}" >"$work/migrate.log" 2>&1 || fail "ExecStartPre: $(cat "$work/migrate.log")"
grep -q "schema migrated" "$work/migrate.log" || fail "migrate said: $(cat "$work/migrate.log")"
start_notify_receiver relay
unit_argv outboxd-relay.service ExecStart /run/outboxd/relay.sock
"${argv[@]}" >"$work/relay.log" 2>&1 &
relay_pid=$!
wait_for 15 "$work/relay.notify" "READY=1"
innet chroot "$R" redis-cli SUBSCRIBE run:pkg-1 >"$work/sub.out" 2>&1 &
wait_for 5 "$work/sub.out" "^subscribe"
mapfile -t envs < <(unit_env outboxd-relay.service)
for i in 1 2 3; do
  innet chroot "$R" env -i PATH=/usr/bin:/bin "${envs[@]}" outboxd emit pkg-1 "{\"n\": $i}" >/dev/null || fail "outboxd emit"
done
for _ in $(seq 1 100); do [[ $(grep -c '"run_id":"pkg-1"' "$work/sub.out") -ge 3 ]] && break; sleep 0.1; done
seqs=$(grep -o '"seq":[0-9]*' "$work/sub.out" | cut -d: -f2 | xargs)
[[ "$seqs" == "1 2 3" ]] || fail "Redis subscriber saw seqs '$seqs', want '1 2 3': $(cat "$work/sub.out")"
unpublished=$(innet chroot "$R" runuser -u postgres -- psql -qtAX -d app -c "SELECT count(*) FROM run_outbox WHERE published_at IS NULL")
[[ $unpublished == 0 ]] || fail "$unpublished events not marked published"
http=$(unit_env outboxd-relay.service | sed -n 's/^OUTBOXD_HTTP_LISTEN=//p')
# Read whole first: grep -q would stop reading at the match and fail curl (pipefail).
metrics=$(innet chroot "$R" curl -sf "http://$http/metrics") || fail "relay /metrics on $http: curl failed"
grep -q "^outboxd_events_published_total 3$" <<<"$metrics" ||
  fail "relay /metrics on $http: $(grep published_total <<<"$metrics")"
say "relay from its unit: migrate, READY=1, 3 events published in order and marked, /metrics on $http"

start_notify_receiver sse
unit_argv outboxd-sse.service ExecStart /run/outboxd/sse.sock
"${argv[@]}" >"$work/sse.log" 2>&1 &
sse_pid=$!
wait_for 15 "$work/sse.notify" "READY=1"
listen=$(unit_env outboxd-sse.service | sed -n 's/^OUTBOXD_LISTEN=//p')
innet chroot "$R" curl -s -N --max-time 2 "http://127.0.0.1:${listen##*:}/runs/pkg-1/events" >"$work/sse.out" || true
[[ $(grep '^id: ' "$work/sse.out" | xargs) == "id: 1 id: 2 id: 3" ]] || fail "SSE stream: $(cat "$work/sse.out")"
stop_unit "$sse_pid" sse
say "gateway from its unit: READY=1, streamed the run; exit 0 with STOPPING=1 on SIGTERM"

# The extension's package: CREATE EXTENSION, then the unit's migrate takes the C seq
# trigger, and the relay (still running) publishes what is written with it.
cp "$ext1" "$R/tmp/"
in_root sh -c 'cd /tmp && apt-get -y -o Dpkg::Use-Pty=0 install ./postgresql-15-outboxd_*.deb' >"$work/ext.log" 2>&1 ||
  fail "apt-get install ./$(basename "$ext1"): $(tail -15 "$work/ext.log")"
innet chroot "$R" runuser -u postgres -- psql -qX -d app -c "CREATE EXTENSION outboxd" \
  -c "GRANT EXECUTE ON FUNCTION outboxd_assign_seq_c() TO outboxd" >"$work/ext-create.log" 2>&1 ||
  fail "CREATE EXTENSION outboxd: $(cat "$work/ext-create.log")"
unit_argv outboxd-relay.service ExecStartPre
"${argv[@]}" >"$work/migrate-c.log" 2>&1 || fail "ExecStartPre with the extension: $(cat "$work/migrate-c.log")"
grep -q "^seq trigger: c (the extension outboxd) (installed now)" "$work/migrate-c.log" ||
  fail "migrate did not take the extension's trigger: $(cat "$work/migrate-c.log")"
for i in 4 5; do
  innet chroot "$R" env -i PATH=/usr/bin:/bin "${envs[@]}" outboxd emit pkg-1 "{\"n\": $i}" >/dev/null || fail "outboxd emit"
done
for _ in $(seq 1 100); do [[ $(grep -c '"run_id":"pkg-1"' "$work/sub.out") -ge 5 ]] && break; sleep 0.1; done
seqs=$(grep -o '"seq":[0-9]*' "$work/sub.out" | cut -d: -f2 | xargs)
[[ "$seqs" == "1 2 3 4 5" ]] || fail "with the C trigger the subscriber saw seqs '$seqs', want '1 2 3 4 5'"
stop_unit "$relay_pid" relay
say "postgresql-15-outboxd: CREATE EXTENSION, migrate took the C trigger, seqs 4 and 5 published; relay exit 0"

# --- Upgrade, remove, purge. ---
uid=$(in_root id -u outboxd)
install_deb "$deb2" upgrade
[[ $(in_root outboxd --version) == "outboxd $v2 (commit $commit)" ]] || fail "after the upgrade: $(in_root outboxd --version)"
[[ $(sha256sum <"$env_file") == "$edited" ]] || fail "the upgrade changed the edited outboxd.env"
[[ -z $(find "$R/etc/outboxd" -name '*.dpkg-*') ]] || fail "the upgrade left $(find "$R/etc/outboxd" -name '*.dpkg-*')"
[[ $(in_root id -u outboxd) == "$uid" ]] || fail "the upgrade changed the outboxd user"
no_unit_enabled
say "upgrade to $v2 kept the edited outboxd.env and the user"
apt_in_root remove remove outboxd
[[ $(sha256sum <"$env_file") == "$edited" ]] || fail "remove changed the edited outboxd.env"
user_is_system
apt_in_root purge purge outboxd postgresql-15-outboxd
apt_in_root autoremove autoremove --purge
innet chroot "$R" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
nothing_of_ours "$work/snap-tools"
say "remove kept the configuration and user; purge left nothing of ours"
