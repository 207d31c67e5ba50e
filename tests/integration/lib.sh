# Shared helpers for integration tests. run.sh starts one PostgreSQL and one Redis for
# the suite (scripts/stack.sh); each test gets a database of its own, drives the real
# binary, and stops everything it started when it exits, whatever happens.
set -euo pipefail

: "${STACK_DIR:?run tests through tests/integration/run.sh}"
. "$STACK_DIR/env"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
OUTBOXD="$BUILD/outboxd"
T=$(basename "$0" .sh)
WORK=$(mktemp -d "$STACK_DIR/$T.XXXX")
BASE_URL="postgresql://postgres@127.0.0.1:$PGPORT"
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  # A test that stopped Redis must not leave it stopped for the next one.
  kill -CONT "$(cat "$STACK_DIR/redis.pid" 2>/dev/null)" 2>/dev/null || true
  redis_ensure_up
}
trap cleanup EXIT

fail() { echo "FAIL [$T]: $*" >&2; exit 1; }
info() { echo "  [$T] $*" >&2; }
q() { psql -X -qtA "$DATABASE_URL" -c "$1"; }

# load_extension LIBRARY: the extension outboxd's install script, as CREATE EXTENSION
# runs it, with LIBRARY for the library, into $DATABASE_URL (scripts/pgext-load.sh).
load_extension() {
  bash "$ROOT/scripts/pgext-load.sh" "$DATABASE_URL" "$1" || fail "could not load the extension's script"
}

# A fresh database for this test, migrated. With SEQ_TRIGGER=c it has the C seq
# trigger of pgext/ (load_extension), which migrate then installs.
new_db() {
  local db="t_${T//[^a-z0-9]/_}_$RANDOM"
  psql -X -q "$BASE_URL/postgres" -c "CREATE DATABASE $db" >/dev/null
  export DATABASE_URL="$BASE_URL/$db"
  [[ ${SEQ_TRIGGER:-} == c ]] && load_extension "$ROOT/pgext/outboxd.so"
  "$OUTBOXD" migrate >"$WORK/migrate.out" 2>"$WORK/migrate.log" || fail "migrate: $(cat "$WORK/migrate.log")"
  if [[ ${SEQ_TRIGGER:-} == c ]]; then
    grep -q "^seq trigger: c " "$WORK/migrate.out" || fail "migrate did not install the C seq trigger: $(cat "$WORK/migrate.out")"
  fi
}

# start_relay NAME [flags...]: relay in the background; its pid in $RELAY_PID.
start_relay() {
  local name=$1; shift
  "$OUTBOXD" relay --stats-interval 1s "$@" >"$WORK/$name.log" 2>&1 &
  RELAY_PID=$!
  PIDS+=("$RELAY_PID")
}

# start_sub NAME [obx_sub flags...]: checking subscriber, waits until it is subscribed.
start_sub() {
  local name=$1; shift
  rm -f "$WORK/$name.ready"
  "$BUILD/obx_sub" --port "$REDIS_PORT" --ready-file "$WORK/$name.ready" "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  SUB_PID=$!
  PIDS+=("$SUB_PID")
  for _ in $(seq 1 200); do [[ -f "$WORK/$name.ready" ]] && return 0; sleep 0.05; done
  fail "subscriber $name did not subscribe"
}

# wait_sub NAME PID: waits for the subscriber to finish; its verdict must be clean.
wait_sub() {
  local name=$1 pid=$2 rc=0
  wait "$pid" || rc=$?
  info "$name: $(cat "$WORK/$name.out")"
  [[ $rc -eq 0 ]] || fail "subscriber $name found a problem: $(cat "$WORK/$name.out") $(head -5 "$WORK/$name.err")"
}

# tell_drained SECONDS PID...: once the test has made every event it will make, waits
# until the outbox is drained (wait_drained SECONDS) and tells each checking client
# (obx_sub, obx_sse) so with SIGUSR1: it then ends at its first quiet moment (500 ms
# without a message; 1 s with every stream open for obx_sse) instead of after its
# whole --idle-ms. Ending early can fail a test (an event not yet arrived counts as
# lost); a repeat sent after that quiet moment goes unseen, as one sent after
# --idle-ms always did.
tell_drained() {
  local limit=$1; shift
  wait_drained "$limit"
  kill -USR1 "$@" 2>/dev/null || true
}

# finish_sub NAME PID: tell_drained 30 PID, then the subscriber's verdict (wait_sub).
finish_sub() {
  tell_drained 30 "$2"
  wait_sub "$1" "$2"
}

# field NAME FILE: value of name=value in a tool's output line.
field() { grep -o "$1=[0-9.]*" "$2" | head -1 | cut -d= -f2; }

# wait_drained SECONDS: until no row is unpublished.
wait_drained() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    [[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 0 ]] && return 0
    sleep 0.1
  done
  fail "backlog not drained in $1 s: $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") left"
}

# stop_relay PID SECONDS: SIGTERM, expect exit 0 within SECONDS.
stop_relay() {
  local pid=$1 limit=$2 rc=0 t0=$SECONDS
  kill -TERM "$pid"
  local deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && fail "relay $pid still running $limit s after SIGTERM"
  wait "$pid" || rc=$?
  [[ $rc -eq 0 ]] || fail "relay exited $rc after SIGTERM (want 0)"
  info "relay stopped with exit 0 after $((SECONDS - t0)) s"
  no_sanitizer_reports
}

# Under `make test-sanitize` a leak or undefined behaviour lands in a process's log.
no_sanitizer_reports() {
  if grep -l -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$WORK"/*.log 2>/dev/null; then
    fail "sanitizer report: $(grep -h -A12 -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$WORK"/*.log | head -30)"
  fi
}

# start_load [obx_load flags...]: the load generator in the background; its pid in
# $LOAD_PID, its summary in $WORK/load.out.
start_load() {
  "$BUILD/obx_load" "$@" >"$WORK/load.out" &
  LOAD_PID=$!
  PIDS+=("$LOAD_PID")
}

prefill() { # prefill COUNT RUNS PREFIX: COUNT events over RUNS runs, a transaction per 5,000
  # (each event updates its run's counter row, and one transaction writing many events
  # of a run gets slower per event as it grows: docs/SCHEMA.md)
  local from
  for ((from = 1; from <= $1; from += 5000)); do
    q "INSERT INTO run_outbox (run_id, payload) SELECT '$3-' || (g % $2), jsonb_build_object('t', 0, 'g', g)
       FROM generate_series($from, least($from + 4999, $1)) g"
  done
}

redis_start() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$STACK_DIR" --pidfile "$STACK_DIR/redis.pid" --logfile "$STACK_DIR/redis.log" "$@"
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ${REDIS_PASS:+-a "$REDIS_PASS" --no-auth-warning} ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  fail "redis did not come back"
}
redis_kill() {
  local pid
  pid=$(cat "$STACK_DIR/redis.pid")
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  rm -f "$STACK_DIR/redis.pid"
}
redis_ensure_up() {
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
  redis-cli -p "$REDIS_PORT" ping 2>&1 | grep -q NOAUTH && return 0
  REDIS_PASS= redis_start >/dev/null 2>&1 || true
}

as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_restart() { as_pg "$PGBIN/pg_ctl" -D "$PGDATA" restart -m fast -w -t 30 >/dev/null; }
# wait_log FILE PATTERN SECONDS [COUNT]: until PATTERN occurs COUNT (default 1) times.
wait_log() {
  local deadline=$((SECONDS + $3)) want=${4:-1}
  while ((SECONDS < deadline)); do
    (( $(grep -c -- "$2" "$1" 2>/dev/null || true) >= want )) && return 0
    sleep 0.05
  done
  fail "'$2' did not appear in $(basename "$1") within $3 s"
}

# The relay's mark key for a run (the epoch includes the database timeline).
mark_key() {
  echo "outboxd:$(q "SELECT epoch || '.' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) FROM outboxd_meta"):mark:$1"
}

# start_sse NAME [flags...]: the gateway on a free port ($SSE_PORT), waits until it answers.
start_sse() {
  local name=$1 try; shift
  for try in 1 2 3 4 5; do
    SSE_PORT=$(pick_port)
    "$OUTBOXD" sse --listen "127.0.0.1:$SSE_PORT" --stats-interval 1s "$@" >"$WORK/$name.log" 2>&1 &
    SSE_PID=$!
    PIDS+=("$SSE_PID")
    for _ in $(seq 1 100); do
      curl -s -o /dev/null "http://127.0.0.1:$SSE_PORT/healthz" && return 0
      kill -0 "$SSE_PID" 2>/dev/null || break
      sleep 0.05
    done
    grep -q "Address already in use" "$WORK/$name.log" || break
  done
  fail "gateway did not start: $(cat "$WORK/$name.log")"
}
. "$ROOT/scripts/ports.sh"
# A free port below the ephemeral range (scripts/ports.sh).
pick_port() { free_port || fail "no free loopback port"; }
# rss_kb PID: resident memory of the process and its children (a gateway's workers), in KB.
rss_kb() {
  local p total=0
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# The pid of the relay process that holds the leader lock ("" if none).
leader_pid() {
  q "SELECT substr(a.application_name, 15) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.classid = 1868724324 AND l.objid = 2 AND l.granted
       AND a.application_name LIKE 'outboxd-relay-%'"
}

# ---- authorization helpers ----------------------------------------------------------
JOSE="$ROOT/tests/jose/jwt.mjs"
# jose_keys DIR [KID_PREFIX]: keys of every algorithm (npm jose): DIR/jwks.json, DIR/private.json.
jose_keys() { node "$JOSE" keys "$@" || fail "jose could not make keys"; }
# mint DIR < SPEC: fills the associative array TOK from lines "LABEL sign KID CLAIMS" or
# "LABEL hostile NAME CLAIMS" (CLAIMS may say "exp":"+60" for 60 s from now).
declare -A TOK
mint() {
  local dir=$1 label token
  while read -r label token; do TOK[$label]=$token; done < <(node "$JOSE" many "$dir" || echo "MINT_FAILED x")
  [[ -z "${TOK[MINT_FAILED]:-}" ]] || fail "jose could not mint tokens"
}
# http_code URL [curl args...]: the status code; the body in $WORK/body, headers in $WORK/headers.
http_code() {
  local url=$1; shift
  curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' --max-time 3 "$@" "$url" || true
}
# start_node NAME ARGS...: tests/jose/server.mjs in the background, waits until it listens.
start_node() {
  local name=$1; shift
  node "$ROOT/tests/jose/server.mjs" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  for _ in $(seq 1 200); do grep -q listening "$WORK/$name.out" 2>/dev/null && return 0; sleep 0.05; done
  fail "$name did not start: $(cat "$WORK/$name.err")"
}
# test_ca DIR: a throw-away CA and a server certificate for 127.0.0.1 (DIR/ca.pem, server.pem, server.key).
test_ca() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=outboxd-test-ca \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null || fail "cannot make a test CA"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null || fail "cannot make a server key"
  printf 'subjectAltName=IP:127.0.0.1\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/ext" -out "$d/server.pem" 2>/dev/null || fail "cannot sign the server certificate"
}
# stream_code URL UNTIL [CURL ARGS...]: http_code for an event stream, which stays open:
# stops reading 200 ms after a line of the body matches the extended regex UNTIL (a
# later event in those 200 ms is still caught), else at curl's --max-time (3 s unless
# given); prints the status, 000 when no answer came.
stream_code() {
  local url=$1 until=$2 c code; shift 2
  rm -f "$WORK/body" "$WORK/headers"
  curl -s -N -o "$WORK/body" -D "$WORK/headers" --max-time 3 "$@" "$url" &
  c=$!
  while kill -0 "$c" 2>/dev/null; do
    if grep -qE "$until" "$WORK/body" 2>/dev/null; then
      sleep 0.2
      kill "$c" 2>/dev/null
      break
    fi
    sleep 0.02
  done
  wait "$c" 2>/dev/null || true
  code=$(awk 'NR == 1 {print $2; exit}' "$WORK/headers" 2>/dev/null)
  echo "${code:-000}"
}
# stream_ok URL TOKEN: 200 with the first event of the run within 2 s.
stream_ok() {
  [[ $(stream_code "$1" '^id: ' --max-time 2 -H "Authorization: Bearer $2") == 200 ]] && grep -q '^id: ' "$WORK/body"
}
# sse_checked_under_load "LOAD ARGS" OBX_SSE ARGS...: the checking SSE client (obx_sse
# --check) opens its streams, then obx_load runs with LOAD ARGS; fails unless every
# stream saw every event once, in order. The client's summary is in $WORK/sse.out.
sse_checked_under_load() {
  local load=$1 cpid rc=0; shift
  rm -f "$WORK/sse.ready"
  "$BUILD/obx_sse" --port "$SSE_PORT" --ready-file "$WORK/sse.ready" --check "$@" >"$WORK/sse.out" 2>"$WORK/sse.err" &
  cpid=$!; PIDS+=("$cpid")
  for _ in $(seq 1 100); do [[ -f "$WORK/sse.ready" ]] && break; sleep 0.05; done
  # shellcheck disable=SC2086
  "$BUILD/obx_load" $load >"$WORK/load.out"
  info "$(cat "$WORK/load.out")"
  tell_drained 30 "$cpid"
  wait "$cpid" || rc=$?
  info "sse: $(cat "$WORK/sse.out")"
  [[ $rc -eq 0 ]] || fail "SSE check failed (lost, repeated or reordered events): $(cat "$WORK/sse.out") $(head -3 "$WORK/sse.err")"
}

# ---- Redis as run in production: TLS, ACL users, sentinels ----------------------------

# make_pki DIR: a throw-away CA (ca.crt) made with the openssl command line; a server
# certificate for redis.test and 127.0.0.1 (server.crt, server.key; not for
# localhost); a client certificate (client.crt, client.key); and a second CA that
# signed none of them (other-ca.crt).
make_pki() {
  local d=$1
  mkdir -p "$d"
  (
    cd "$d"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key; key other-ca.key; key server.key; key client.key
    openssl req -x509 -new -key ca.key -out ca.crt -days 2 -subj "/CN=outboxd test CA" 2>/dev/null
    openssl req -x509 -new -key other-ca.key -out other-ca.crt -days 2 -subj "/CN=outboxd other CA" 2>/dev/null
    openssl req -new -key server.key -out server.csr -subj "/CN=redis.test" 2>/dev/null
    printf 'subjectAltName=DNS:redis.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
      -out server.crt 2>/dev/null
    openssl req -new -key client.key -out client.csr -subj "/CN=outboxd" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext \
      -out client.crt 2>/dev/null
  ) || fail "openssl could not make the test certificates"
  [[ -s "$d/client.crt" ]] || fail "openssl could not make the test certificates"
}

# start_redis NAME plain|tls [redis-server args...]: a Redis of this test's own on a
# free port ($R_PORT; TLS only with tls, using the certificates in $PKI), stopped when
# the test ends. Its log is $WORK/NAME.redis.out.
start_redis() {
  local name=$1 mode=$2 try pid; shift 2
  for try in 1 2 3 4 5; do
    R_PORT=$(pick_port)
    local ports=(--port "$R_PORT")
    [[ $mode == tls ]] && ports=(--port 0 --tls-port "$R_PORT" --tls-cert-file "$PKI/server.crt"
      --tls-key-file "$PKI/server.key" --tls-ca-cert-file "$PKI/ca.crt" --tls-auth-clients no)
    rm -f "$WORK/$name.pid"
    redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$WORK" \
      --pidfile "$WORK/$name.pid" --logfile "$WORK/$name.redis.out" "${ports[@]}" "$@" || fail "redis $name"
    for _ in $(seq 1 100); do [[ -s "$WORK/$name.pid" ]] && break; sleep 0.02; done
    pid=$(cat "$WORK/$name.pid" 2>/dev/null || true)
    [[ -n "$pid" ]] && PIDS+=("$pid")
    for _ in $(seq 1 100); do
      grep -q "Ready to accept connections" "$WORK/$name.redis.out" 2>/dev/null && return 0
      [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null && break
      sleep 0.05
    done
    grep -q "Address already in use" "$WORK/$name.redis.out" || break
  done
  fail "redis $name did not start: $(tail -3 "$WORK/$name.redis.out")"
}

# wait_sleeping APPNAME: until the session of that application_name is in its
# pg_sleep (whatever it did before the sleep is done).
wait_sleeping() {
  for _ in $(seq 1 200); do
    [[ $(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$1' AND wait_event = 'PgSleep'") -ge 1 ]] &&
      return 0
    sleep 0.05
  done
  fail "session $1 did not reach its pg_sleep"
}

# wait_relay_asleep: until the leading relay waits for a NOTIFY: it holds the wake-up
# lock (advisory, objid 3) exactly then (src/store_schema.c, migration 2).
wait_relay_asleep() {
  for _ in $(seq 1 200); do
    [[ $(q "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1868724324 AND objid = 3
            AND mode = 'ExclusiveLock' AND granted") -ge 1 ]] && return 0
    sleep 0.05
  done
  fail "the relay did not go to wait for a NOTIFY"
}

# wait_replica PRIMARY_PORT REPLICA_PORT: until a write on the primary reaches the
# replica within a WAIT of 100 ms. (After its first sync a replica says its link is up
# a second or so before its primary streams writes to it, so the first WAITs after
# writes would be short.) Start the primary with --repl-diskless-sync-delay 0, or the
# first sync waits 5 s.
wait_replica() {
  for _ in $(seq 1 200); do
    [[ $(printf 'SET outboxd-test:replica-check 1\nWAIT 1 100\n' | redis-cli -p "$1" | tail -1) == 1 ]] && return 0
    sleep 0.05
  done
  fail "the replica on $2 did not sync with its primary on $1"
}

# redis_listen FILE PORT [redis-cli flags...] (P|S)SUBSCRIBE NAME...: redis-cli
# subscribed in the background, what it gets in FILE line by line, its pid in
# $LISTEN_PID; returns once Redis confirmed the subscription.
redis_listen() {
  local file=$1 port=$2; shift 2
  stdbuf -oL redis-cli -p "$port" "$@" >"$file" 2>&1 &
  LISTEN_PID=$!
  PIDS+=("$LISTEN_PID")
  for _ in $(seq 1 200); do
    grep -qE '^"?[ps]?subscribe("|$)' "$file" && return 0
    kill -0 "$LISTEN_PID" 2>/dev/null || break
    sleep 0.05
  done
  fail "redis-cli $* did not subscribe: $(head -3 "$file")"
}

# acl_rules WHO: the user line for outboxd-WHO from docs/OPERATIONS.md, with the
# password WHO-pw: the tests use the documented rules exactly as written.
acl_rules() {
  local line
  line=$(grep -m1 "^user outboxd-$1 " "$ROOT/docs/OPERATIONS.md") || fail "no ACL for outboxd-$1 in docs/OPERATIONS.md"
  echo "${line/>[A-Z_]*PASSWORD/>$1-pw}"
}

# readyz URL: "CODE BODY" of the relay's /readyz.
readyz() { curl -s -o "$WORK/readyz.body" -w '%{http_code}' --max-time 5 "$1/readyz"; echo " $(cat "$WORK/readyz.body")"; }

# start_sentinels NAME MASTER_PORT: three sentinels watching the primary as "$NAME"
# (down after 1 s, quorum 2), on free ports ($SENTINELS = "127.0.0.1:p1,..."); waits
# until each knows the replica and the other two, so that a failover can be agreed.
start_sentinels() {
  local name=$1 mport=$2 i p pid
  SENTINELS=""
  SENTINEL_PORTS=()
  for i in 1 2 3; do
    p=$(pick_port)
    cat >"$WORK/sentinel$i.conf" <<EOC
port $p
bind 127.0.0.1
daemonize yes
pidfile $WORK/sentinel$i.pid
logfile $WORK/sentinel$i.redis.out
dir $WORK
sentinel monitor $name 127.0.0.1 $mport 2
sentinel down-after-milliseconds $name 1000
sentinel failover-timeout $name 10000
sentinel parallel-syncs $name 1
EOC
    redis-server "$WORK/sentinel$i.conf" --sentinel || fail "sentinel $i"
    for _ in $(seq 1 100); do [[ -s "$WORK/sentinel$i.pid" ]] && break; sleep 0.02; done
    pid=$(cat "$WORK/sentinel$i.pid")
    PIDS+=("$pid")
    SENTINEL_PORTS+=("$p")
    SENTINELS+="${SENTINELS:+,}127.0.0.1:$p"
  done
  local deadline=$((SECONDS + 30))
  for p in "${SENTINEL_PORTS[@]}"; do
    until [[ $(redis-cli -p "$p" sentinel master "$name" 2>/dev/null | awk 'prev == "num-other-sentinels" {print} {prev = $0}') == 2 &&
             $(redis-cli -p "$p" sentinel master "$name" 2>/dev/null | awk 'prev == "num-slaves" {print} {prev = $0}') -ge 1 ]]; do
      ((SECONDS < deadline)) || fail "sentinel on $p did not see the replica and the other sentinels in 30 s"
      sleep 0.2
    done
  done
}

# start_cluster NAME [redis-server flags...]: a Redis Cluster of 3 primaries and 3
# replicas on free loopback ports (scripts/cluster.sh, in $WORK/NAME; each node with its
# cluster bus port, +10000, free too); CLUSTER_NODES gets HOST:PORT,... of all six,
# CLUSTER_PORTS the ports (primaries first, as --cluster create assigns them). Waits
# until every node says cluster_state:ok and every replica is in sync. With
# CLUSTER_TLS=1 the nodes speak only TLS (clients, cluster bus, replication) with the
# certificates of make_pki in $PKI.
start_cluster() {
  local name=$1 rc=0 f; shift
  local tls=()
  [[ ${CLUSTER_TLS:-0} == 1 ]] && tls=(--tls "$PKI")
  bash "$ROOT/scripts/cluster.sh" start "$WORK/$name" --primaries 3 --replicas 1 "${tls[@]}" "$@" || rc=$?
  # Its nodes are this test's, stopped when it ends whatever happened.
  for f in "$WORK/$name"/node*.pid; do
    if [[ -s $f ]]; then PIDS+=("$(cat "$f")"); fi
  done
  ((rc == 0)) || fail "cluster $name did not start (scripts/cluster.sh)"
  # shellcheck disable=SC1091
  . "$WORK/$name/env"
}

# cluster_primary_of SLOT: the port of the primary that serves slot, as the first node
# that answers sees it (CLUSTER NODES).
cluster_primary_of() {
  local p
  for p in "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$p" cluster nodes 2>/dev/null | awk -v s="$1" '
      $3 ~ /master/ && $3 !~ /fail/ {
        for (i = 9; i <= NF; i++) {
          if ($i ~ /^\[/) continue
          n = split($i, r, "-"); if (n == 1) r[2] = r[1]
          if (s + 0 >= r[1] + 0 && s + 0 <= r[2] + 0) { split($2, a, "[:@]"); print a[2]; found = 1; exit }
        }
      }
      END { exit !found }' && return 0
  done
  return 1
}
