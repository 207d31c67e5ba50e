#!/usr/bin/env bash
# outboxd benchmark, run by `make bench` (after `make all`). Starts its own throw-away
# PostgreSQL + Redis (scripts/stack.sh, loopback only), measures in one run:
#   1. drain of a pre-filled backlog (outboxd defaults, --max-batch-size 5000) with the
#      relay's CPU and peak RSS and the CPU of its PostgreSQL backend and of Redis;
#   2. baselines: the naive loop (200 ms sleep and no sleep), the SQL ceiling (one
#      statement claims and marks 1000 rows), outboxd's SQL alone without Redis, and
#      an experiment (bench/overlap_sketch.c): outboxd's SQL and Lua script with the
#      PostgreSQL work overlapped with the Redis work;
#   3. steady load at 1,000 and 10,000 events/s with NOTIFY and poll-only:
#      commit->receipt latency (obx_sub), backlog growth, relay CPU;
#   4. producer cost: insert throughput at 1/8/32 writers, 1 and 1000 runs, NOTIFY
#      trigger on and off, and a plain table without per-run seq;
#   5. (BENCH_FSYNC=1, default) the naive loop and the default drain with fsync=on,
#      because scripts/stack.sh runs PostgreSQL with fsync=off, which flatters the
#      naive loop's commit-per-event most;
#   6. (BENCH_TRANSPORTS=1, default) Redis transports: drain and 1,000/s latency of
#      the previous release's relay (BASELINE_REF, default v0.1.0) and of this one over
#      plaintext, over TLS, and with --redis-wait-replicas 1 against a replica, all
#      against one Redis with a plaintext and a TLS port.
# and prints one table. Environment:
#   BENCH_EVENTS (200000)       events pre-filled for each drain
#   BENCH_NAIVE_EVENTS (20000)  events pre-filled for each naive-loop run
#   BENCH_REPEAT (3)            repetitions of the drain measurements (median reported)
#   BENCH_STEADY_SECONDS (10)   length of each steady-load run
#   BENCH_PRODUCER_SECONDS (2)  length of each producer measurement
#   BENCH_PRODUCER_REPEAT (3)   repetitions of each producer measurement (median reported)
#   BENCH_FSYNC (1)             0 skips part 5
#   BENCH_TRANSPORTS (1)        0 skips part 6
#   BASELINE_REF (v0.1.0)       the release part 6 compares with
#   BENCH_KEEP (0)              1 keeps the work directory (logs, raw outputs)
#   BUILD (build)               where outboxd, obx_load and obx_sub are
set -Eeuo pipefail
trap 'echo "[bench] FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
N=${BENCH_EVENTS:-200000}
NAIVE_N=${BENCH_NAIVE_EVENTS:-20000}
REPEAT=${BENCH_REPEAT:-3}
STEADY_S=${BENCH_STEADY_SECONDS:-10}
PROD_S=${BENCH_PRODUCER_SECONDS:-2}
PROD_REPEAT=${BENCH_PRODUCER_REPEAT:-3}
DO_FSYNC=${BENCH_FSYNC:-1}
DO_TRANSPORTS=${BENCH_TRANSPORTS:-1}
DRAIN_RUNS=100
STEADY_RUNS=50
STEADY_CONNS=8
PAD=210 # obx_load payload {"t":..,"k":..,"pad":"x..."}: about 250 bytes as stored
HZ=1000000000 # ticks() counts nanoseconds

for b in outboxd obx_load obx_sub; do
  [[ -x "$BUILD/$b" ]] || { echo "bench: $BUILD/$b missing: run 'make all' first" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-bench.XXXXXX")
chmod 755 "$WORK"
STACK="$WORK/stack"
TR_PIDS=()
cleanup() {
  # Only this shell's own background jobs that are still running, and the Redis
  # servers part 6 started.
  local p
  for p in $(jobs -p) "${TR_PIDS[@]}"; do
    kill -9 "$p" 2>/dev/null || true
  done
  bash "$ROOT/scripts/stack.sh" stop "$STACK" >/dev/null 2>&1 || true
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
    echo "bench: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # a free loopback port below the ephemeral range
  local p
  for _ in $(seq 1 100); do
    p=$((10000 + RANDOM % 22000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# ---- helpers -----------------------------------------------------------------------

say "compiling bench helpers"
CFL="-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -I$ROOT/src $(pkg-config --cflags libpq hiredis openssl)"
LIBS="$(pkg-config --libs libpq hiredis openssl)"
# The helpers that measure outboxd's own SQL and script link the relay's objects.
OBJS="$BUILD/store_pg.o $BUILD/redis_sink.o $BUILD/redis_endpoint.o $BUILD/redis_conn.o $BUILD/redis_tls.o
  $BUILD/event.o $BUILD/buf.o $BUILD/log.o"
# shellcheck disable=SC2086
cc $CFL bench/naive_relay.c -o "$WORK/naive_relay" $LIBS
# shellcheck disable=SC2086
cc $CFL bench/bench_tool.c $OBJS -o "$WORK/bench_tool" $LIBS
# shellcheck disable=SC2086
cc $CFL bench/overlap_sketch.c $OBJS -o "$WORK/overlap_sketch" $LIBS

say "starting PostgreSQL and Redis"
bash scripts/stack.sh start "$STACK" >"$WORK/stack.log" 2>&1 || die "stack: $(tail -5 "$WORK/stack.log")"
# shellcheck disable=SC1091
. "$STACK/env"
BASE_URL=$DATABASE_URL
"$BUILD/outboxd" migrate >"$WORK/migrate.log" 2>&1 || die "migrate: $(cat "$WORK/migrate.log")"

q() { psql -X -qtA -v ON_ERROR_STOP=1 "$BASE_URL" "$@"; }
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
ticks() { # CPU time of a process (all its threads) in ns, from schedstat (0 if it is gone)
  { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{t += $1} END {printf "%.0f\n", t}'
}
sys_busy_ns() { # CPU time the whole machine spent busy (all cores), in ns
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1e9 / hz}' /proc/stat
}
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
kv() { # kv NAME TEXT: the value of NAME=value in TEXT, or "?"
  local v
  v=$(grep -o "$1=[0-9.]*" <<<"$2" | head -1 | cut -d= -f2 || true)
  echo "${v:-?}"
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
unpublished() { q -c "SELECT count(*) FROM run_outbox WHERE published_at IS NULL"; }

# Empties the outbox and Redis (ids keep increasing; the relay's de-duplication marks
# go with FLUSHALL, so every measurement starts alike).
reset_data() {
  q -c "TRUNCATE run_outbox, run_outbox_seq" >/dev/null
  rcli FLUSHALL >/dev/null
}

# prefill COUNT: COUNT events over DRAIN_RUNS runs, ~250-byte payloads, one statement.
# Triggers are off for this session only (session_replication_role): the per-run seq
# is computed here instead, because the seq trigger costs O(k^2) for k events of one
# run in one transaction (50 s for 200,000 rows here). VACUUM ANALYZE afterwards, so
# each drain starts from the same state (visibility map set, statistics current).
prefill() {
  reset_data
  q -c "SET session_replication_role = replica" \
    -c "INSERT INTO run_outbox (run_id, seq, payload)
        SELECT 'drain-' || (g % $DRAIN_RUNS), g / $DRAIN_RUNS + 1,
               jsonb_build_object('t', (extract(epoch FROM clock_timestamp()) * 1e6)::bigint,
                                  'k', g, 'pad', repeat('x', 200))
        FROM generate_series(0, $1 - 1) g" \
    -c "INSERT INTO run_outbox_seq SELECT run_id, max(seq) FROM run_outbox GROUP BY run_id" \
    -c "VACUUM ANALYZE run_outbox" -c "CHECKPOINT" >/dev/null
}

# start_relay LOG [flags]: the relay in the background, pid in RELAY_PID. RELAY_BIN
# (default: this build's outboxd) and RELAY_EXTRA (flags) let part 6 vary the relay.
RELAY_EXTRA=()
SUB_EXTRA=()
start_relay() {
  local log=$1
  shift
  "${RELAY_BIN:-$BUILD/outboxd}" relay "$@" "${RELAY_EXTRA[@]}" >"$log" 2>&1 &
  RELAY_PID=$!
}

stop_pid() { # SIGTERM, wait up to 15 s, then SIGKILL; then until its backend is gone
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    [[ $(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay%'") == 0 ]] && break
    sleep 0.05
  done
}

relay_backend() { # pid of the relay's PostgreSQL backend (the newest: an old one may be exiting)
  local b=""
  for _ in $(seq 1 100); do
    b=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay%'
              ORDER BY backend_start DESC LIMIT 1")
    [[ -n "$b" ]] && break
    sleep 0.02
  done
  echo "${b:-0}"
}

median_line() { # median (by field $2 of "key value ...") of the lines on stdin
  sort -t' ' -k2,2g | awk '{l[NR] = $0} END {print l[int((NR + 1) / 2)]}'
}

# ---- 1. drain ----------------------------------------------------------------------

# drain_once LABEL [relay flags]: prints "label rate seconds relay_cpu backend_cpu redis_cpu hwm_kb"
drain_once() {
  local label=$1
  shift
  prefill "$N"
  local r0 t0 out be s0
  r0=$(ticks "$REDIS_PID")
  s0=$(sys_busy_ns)
  t0=$EPOCHREALTIME
  start_relay "$WORK/relay-$label.log" "$@"
  be=$(relay_backend)
  out=$("$WORK/bench_tool" wait-drained --since "$t0" --timeout $((N / 1000 + 120))) ||
    die "drain $label: $out"
  local secs relay_t be_t redis_t hwm others
  secs=${out##*seconds=}
  relay_t=$(ticks "$RELAY_PID")
  be_t=$(ticks "$be")
  redis_t=$(($(ticks "$REDIS_PID") - r0))
  others=$(($(sys_busy_ns) - s0 - relay_t - be_t - redis_t))
  hwm=$(hwm_kb "$RELAY_PID")
  stop_pid "$RELAY_PID"
  [[ $(unpublished) == 0 ]] || die "drain $label: rows left unpublished"
  echo "$label $(calc %.0f "$N / $secs") $secs $relay_t $be_t $redis_t $hwm $others"
}

# baseline_once LABEL CMD...: runs a baseline that prints "... rows|published=N seconds=S rate=R/s"
baseline_once() {
  local label=$1 n=$2
  shift 2
  prefill "$n"
  local out
  out=$("$@") || die "$label: $out"
  local rows secs
  rows=$(kv rows "$out")
  [[ $rows == "?" ]] && rows=$(kv published "$out")
  secs=$(kv seconds "$out")
  [[ $rows != "?" && $secs != "?" ]] || die "$label: unexpected output: $out"
  echo "$label $(calc %.0f "$rows / $secs") $secs $rows"
}

declare -A DRAIN RANGE
run_drains() {
  local i label
  for label in default batch5000 ceiling sqlonly overlap; do : >"$WORK/drain-$label.txt"; done
  for ((i = 1; i <= REPEAT; i++)); do
    say "drain $i/$REPEAT: outboxd relay (defaults), $N events"
    drain_once default >>"$WORK/drain-default.txt"
    say "drain $i/$REPEAT: outboxd relay --max-batch-size 5000"
    drain_once batch5000 --max-batch-size 5000 >>"$WORK/drain-batch5000.txt"
    say "drain $i/$REPEAT: SQL ceiling (claim+mark 1000 per statement, no Redis)"
    baseline_once ceiling "$N" "$WORK/bench_tool" ceiling --batch 1000 --timeout 120 >>"$WORK/drain-ceiling.txt"
    say "drain $i/$REPEAT: outboxd's SQL alone (fetch 2000 + mark, no Redis)"
    baseline_once sqlonly "$N" "$WORK/bench_tool" sql-only --batch 2000 --timeout 120 >>"$WORK/drain-sqlonly.txt"
    say "drain $i/$REPEAT: experiment: outboxd's SQL + script, PostgreSQL overlapped with Redis"
    baseline_once overlap "$N" "$WORK/overlap_sketch" --redis-port "$REDIS_PORT" --batch 2000 >>"$WORK/drain-overlap.txt"
  done
  for label in default batch5000 ceiling sqlonly overlap; do
    DRAIN[$label]=$(median_line <"$WORK/drain-$label.txt")
    RANGE[$label]=$(awk 'NR == 1 || $2 < lo {lo = $2} NR == 1 || $2 > hi {hi = $2} END {print lo "-" hi}' \
      "$WORK/drain-$label.txt")
  done
  say "naive loop without sleep, $NAIVE_N events"
  DRAIN[naive0]=$(baseline_once naive0 "$NAIVE_N" "$WORK/naive_relay" --db "$BASE_URL" \
    --redis-port "$REDIS_PORT" --sleep-ms 0 --max-seconds 60)
  say "naive loop with 200 ms sleep, $NAIVE_N events, capped at 10 s"
  DRAIN[naive200]=$(baseline_once naive200 "$NAIVE_N" "$WORK/naive_relay" --db "$BASE_URL" \
    --redis-port "$REDIS_PORT" --sleep-ms 200 --max-seconds 10)
  # EXPLAIN of the relay's fetch on a fresh backlog, for the record.
  prefill "$N"
  q -c "EXPLAIN (ANALYZE, BUFFERS) SELECT id, run_id, seq,
          to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
          payload::text, extract(epoch FROM created_at)::float8
        FROM run_outbox WHERE published_at IS NULL ORDER BY id LIMIT 100" >"$WORK/explain-fetch.txt"
}

# ---- 2. steady load ----------------------------------------------------------------

declare -A STEADY
# steady_once RATE MODE(notify|poll) [KEY]: the result goes to STEADY[KEY] (RATE-MODE).
steady_once() {
  local rate=$1 mode=$2 key=${3:-$1-$2} flags=()
  [[ $mode == poll ]] && flags=(--no-listen)
  reset_data
  local tag="steady-$key"
  start_relay "$WORK/relay-$tag.log" "${flags[@]}"
  relay_backend >/dev/null
  rm -f "$WORK/$tag.ready"
  "$BUILD/obx_sub" --port "$REDIS_PORT" "${SUB_EXTRA[@]}" --prefix steady --ready-file "$WORK/$tag.ready" \
    --max-seconds $((STEADY_S + 90)) --check >"$WORK/$tag.sub" 2>"$WORK/$tag.sub.err" &
  local sub=$!
  for _ in $(seq 1 200); do [[ -f "$WORK/$tag.ready" ]] && break; sleep 0.05; done
  [[ -f "$WORK/$tag.ready" ]] || die "$tag: subscriber did not subscribe"
  # Backlog sampler: unpublished rows every 0.5 s while the load runs.
  local t0=$EPOCHREALTIME
  (
    while :; do
      sleep 0.5
      echo "$(calc %.2f "$EPOCHREALTIME - $t0") $(unpublished)"
    done
  ) >"$WORK/$tag.backlog" 2>/dev/null &
  local sampler=$!
  local c0 c1 t1
  c0=$(ticks "$RELAY_PID")
  "$BUILD/obx_load" --rate "$rate" --runs "$STEADY_RUNS" --conns "$STEADY_CONNS" --seconds "$STEADY_S" \
    --prefix steady --pad "$PAD" >"$WORK/$tag.load" 2>"$WORK/$tag.load.err" || true
  c1=$(ticks "$RELAY_PID")
  t1=$EPOCHREALTIME
  local end_backlog
  end_backlog=$(unpublished)
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  local drained
  drained=$("$WORK/bench_tool" wait-drained --since "$t1" --timeout 60) || true
  sleep 0.3 # the last messages reach the subscriber
  kill -TERM "$sub" 2>/dev/null || true
  wait "$sub" 2>/dev/null || true
  local hwm
  hwm=$(hwm_kb "$RELAY_PID")
  stop_pid "$RELAY_PID"
  local achieved start_backlog max_backlog cpu_pct check sub_line
  achieved=$(kv rate "$(cat "$WORK/$tag.load")")
  start_backlog=$(awk '$1 >= 1.0 {print $2; exit}' "$WORK/$tag.backlog")
  max_backlog=$(awk 'BEGIN {m = 0} $2 > m {m = $2} END {print m}' "$WORK/$tag.backlog")
  [[ $end_backlog -gt $max_backlog ]] && max_backlog=$end_backlog
  cpu_pct=$(calc %.1f "($c1 - $c0) / $HZ / ($t1 - $t0) * 100")
  sub_line=$(cat "$WORK/$tag.sub")
  check=ok
  for f in lost duplicates out_of_order unexpected; do
    v=$(kv "$f" "$sub_line")
    [[ "$v" == 0 ]] || check="$f=$v"
  done
  local grew=no
  if ((end_backlog > ${start_backlog:-0} && end_backlog * 4 > rate)); then grew=YES; fi
  local lat
  lat=${sub_line##*latency_ms }
  STEADY[$key]="$achieved $(kv received "$sub_line") \
$(kv p50 "$lat") $(kv p99 "$lat") $(kv p999 "$lat") $(kv max "$lat") \
${start_backlog:-?} $end_backlog $max_backlog $grew $cpu_pct $hwm $check"
  say "  $tag: $(cat "$WORK/$tag.load") | $sub_line | backlog 1s=${start_backlog:-?} end=$end_backlog max=$max_backlog | relay cpu ${cpu_pct}% | ${drained:-not drained}"
}

run_steady() {
  local rate mode
  for rate in 1000 10000; do
    for mode in notify poll; do
      say "steady: $rate events/s, $mode, ${STEADY_S}s"
      steady_once "$rate" "$mode"
    done
  done
}

# ---- 3. producer cost --------------------------------------------------------------

declare -A PROD
producer_once() { # URL CONNS RUNS -> events/s
  local url=$1 conns=$2 runs=$3 out
  out=$("$BUILD/obx_load" --url "$url" --rate 1000000 --seconds "$PROD_S" --conns "$conns" --runs "$runs" \
    --prefix prod --pad "$PAD" 2>&1) || true
  kv rate "$out"
}

run_producers() {
  # The plain table: same columns, BIGSERIAL id, the relay's partial index, no trigger
  # (so no per-run seq and no NOTIFY). Reached through search_path, so obx_load's
  # INSERT INTO run_outbox lands there.
  q -c "CREATE SCHEMA IF NOT EXISTS bench_plain" \
    -c "CREATE TABLE IF NOT EXISTS bench_plain.run_outbox (id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL,
          seq BIGINT NOT NULL DEFAULT 0, payload JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
          published_at TIMESTAMPTZ NULL, attempts INT NOT NULL DEFAULT 0, last_error TEXT NULL)" \
    -c "CREATE INDEX IF NOT EXISTS plain_unpublished ON bench_plain.run_outbox (id) WHERE published_at IS NULL" \
    >/dev/null
  local plain_url="$BASE_URL?options=-csearch_path%3Dbench_plain"
  local rep trig conns runs key v
  # Repetitions outermost, so that a burst of other load on the machine spreads over
  # all cells instead of spoiling one; each cell reports its median.
  for ((rep = 1; rep <= PROD_REPEAT; rep++)); do
    for trig in on off; do
      if [[ $trig == on ]]; then
        q -c "ALTER TABLE run_outbox ENABLE TRIGGER run_outbox_notify" >/dev/null
      else
        q -c "ALTER TABLE run_outbox DISABLE TRIGGER run_outbox_notify" >/dev/null
      fi
      for conns in 1 8 32; do
        for runs in 1 1000; do
          reset_data
          q -c CHECKPOINT >/dev/null
          v=$(producer_once "$BASE_URL" "$conns" "$runs")
          echo "$conns-$runs-$trig $v" >>"$WORK/producer.txt"
          say "producer $rep/$PROD_REPEAT: conns=$conns runs=$runs notify=$trig: $v/s"
        done
      done
    done
    q -c "ALTER TABLE run_outbox ENABLE TRIGGER run_outbox_notify" >/dev/null
    for conns in 1 8 32; do
      q -c "TRUNCATE bench_plain.run_outbox" -c CHECKPOINT >/dev/null
      v=$(producer_once "$plain_url" "$conns" 1000)
      echo "$conns-plain $v" >>"$WORK/producer.txt"
      say "producer $rep/$PROD_REPEAT: conns=$conns plain table: $v/s"
    done
  done
  while read -r key; do
    PROD[$key]=$(awk -v k="$key" '$1 == k {print "x", $2}' "$WORK/producer.txt" | median_line | cut -d' ' -f2)
  done < <(cut -d' ' -f1 "$WORK/producer.txt" | sort -u)
  q -c "SET client_min_messages = warning" -c "DROP SCHEMA bench_plain CASCADE" >/dev/null
}

# ---- 4. fsync=on -------------------------------------------------------------------

run_fsync() {
  say "restarting PostgreSQL with fsync=on"
  local as=()
  [[ $(id -u) -eq 0 ]] && as=(runuser -u postgres --)
  "${as[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$STACK/pg.log" -w -t 30 -m fast \
    -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDATA -c fsync=on -c max_connections=300" \
    restart >/dev/null || die "pg_ctl restart"
  [[ $(q -c "SHOW fsync") == on ]] || die "fsync is not on after the restart"
  say "fsync=on: naive loop without sleep, $NAIVE_N events"
  DRAIN[naive0_fsync]=$(baseline_once naive0_fsync "$NAIVE_N" "$WORK/naive_relay" --db "$BASE_URL" \
    --redis-port "$REDIS_PORT" --sleep-ms 0 --max-seconds 60)
  say "fsync=on: outboxd relay (defaults), $N events"
  drain_once default_fsync >"$WORK/drain-default_fsync.txt"
  DRAIN[default_fsync]=$(cat "$WORK/drain-default_fsync.txt")
}

# ---- 6. Redis transports -----------------------------------------------------------

# The previous release's relay, built once in a scratch worktree (scripts/baseline.sh
# does it when the repository has it).
baseline_relay() {
  if [[ -x "$ROOT/scripts/baseline.sh" ]]; then
    echo "$(bash "$ROOT/scripts/baseline.sh" "${BASELINE_REF:-v0.1.0}")/outboxd"
    return
  fi
  local ref=${BASELINE_REF:-v0.1.0} dir="$WORK/baseline" rc=0
  git -C "$ROOT" worktree add --quiet --detach "$dir/src" "$ref" >&2 || return 1
  make -s -C "$dir/src" BUILD="$dir/build" "$dir/build/outboxd" >&2 || rc=$?
  git -C "$ROOT" worktree remove --force "$dir/src" >&2 || true
  ((rc == 0)) && echo "$dir/build/outboxd"
}

# One Redis with a plaintext and a TLS port (certificates from a throw-away CA), and
# a second one that becomes its replica for the WAIT measurements. Each variant runs
# the drain (median of REPEAT, interleaved so that a burst of other load spreads
# over all of them) and the 1,000/s steady load of part 2.
declare -A TRANSPORT
run_transports() {
  local pki="$WORK/pki" base
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
      -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext \
      -out server.crt 2>/dev/null
  ) || die "openssl"
  say "transports: building the baseline relay (${BASELINE_REF:-v0.1.0})"
  base=$(baseline_relay) || die "cannot build the baseline relay (BASELINE_REF=${BASELINE_REF:-v0.1.0})"
  local pp tp rp
  pp=$(free_port); tp=$(free_port); rp=$(free_port)
  redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$WORK" --port "$pp" \
    --tls-port "$tp" --tls-cert-file "$pki/server.crt" --tls-key-file "$pki/server.key" \
    --tls-ca-cert-file "$pki/ca.crt" --tls-auth-clients no --pidfile "$WORK/tr.pid" --logfile "$WORK/tr.log"
  redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$WORK" --port "$rp" \
    --pidfile "$WORK/trr.pid" --logfile "$WORK/trr.log"
  for _ in $(seq 1 100); do [[ -s "$WORK/tr.pid" && -s "$WORK/trr.pid" ]] && break; sleep 0.05; done
  TR_PIDS=("$(cat "$WORK/tr.pid")" "$(cat "$WORK/trr.pid")")
  local trpid=${TR_PIDS[0]} v i
  # variant -> relay binary, URL, relay flags, subscriber flags
  declare -A bin url rflags sflags
  bin=([base]=$base [plain]=$BUILD/outboxd [tls]=$BUILD/outboxd [repl]=$BUILD/outboxd [wait1]=$BUILD/outboxd)
  url=([base]=redis://127.0.0.1:$pp/0 [plain]=redis://127.0.0.1:$pp/0 [tls]=rediss://127.0.0.1:$tp/0
    [repl]=redis://127.0.0.1:$pp/0 [wait1]=redis://127.0.0.1:$pp/0)
  rflags=([tls]="--redis-tls-ca $pki/ca.crt" [wait1]="--redis-wait-replicas 1")
  sflags=([tls]="--port $tp --tls-ca $pki/ca.crt")
  one() { # one drain|steady VARIANT
    local -a rf sf
    read -r -a rf <<<"${rflags[$2]:-}"
    read -r -a sf <<<"${sflags[$2]:-}"
    RELAY_EXTRA=("${rf[@]}")
    SUB_EXTRA=("${sf[@]}")
    if [[ $1 == drain ]]; then
      RELAY_BIN=${bin[$2]} REDIS_URL=${url[$2]} REDIS_PORT=$pp REDIS_PID=$trpid drain_once "tr-$2" \
        >>"$WORK/drain-tr-$2.txt"
    else
      RELAY_BIN=${bin[$2]} REDIS_URL=${url[$2]} REDIS_PORT=$pp steady_once 1000 notify "tr-$2-$3"
      # "p99 line" per run, for the median by p99
      echo "$(cut -d' ' -f4 <<<"${STEADY[tr-$2-$3]}") ${STEADY[tr-$2-$3]}" >>"$WORK/steady-tr-$2.txt"
    fi
    RELAY_EXTRA=()
    SUB_EXTRA=()
  }
  for phase in alone replica; do
    local vs=(base plain tls)
    if [[ $phase == replica ]]; then
      vs=(repl wait1)
      redis-cli -p "$rp" replicaof 127.0.0.1 "$pp" >/dev/null
      for _ in $(seq 1 200); do
        redis-cli -p "$rp" info replication | grep -q master_link_status:up && break
        sleep 0.05
      done
    fi
    for ((i = 1; i <= REPEAT; i++)); do
      for v in "${vs[@]}"; do
        say "transports $i/$REPEAT: drain, $v"
        one drain "$v"
      done
    done
    for ((i = 1; i <= REPEAT; i++)); do
      for v in "${vs[@]}"; do
        say "transports $i/$REPEAT: steady 1000/s, $v"
        one steady "$v" "$i"
      done
    done
  done
  for v in base plain tls repl wait1; do
    TRANSPORT[$v]=$(median_line <"$WORK/drain-tr-$v.txt")
    STEADY[tr-$v]=$(awk '{print "x", $0}' "$WORK/steady-tr-$v.txt" | median_line | cut -d' ' -f3-)
    RANGE[tr-$v]=$(awk 'NR == 1 || $2 < lo {lo = $2} NR == 1 || $2 > hi {hi = $2} END {print lo "-" hi}' \
      "$WORK/drain-tr-$v.txt")
  done
  kill -9 "${TR_PIDS[@]}" 2>/dev/null || true
  TR_PIDS=()
}

# ---- run ---------------------------------------------------------------------------

STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no git")
git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || REV="$REV + uncommitted src changes"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
run_drains
run_steady
run_producers
# Transports before fsync=on, so that they drain under the same PostgreSQL as part 1.
[[ $DO_TRANSPORTS == 1 ]] && run_transports
[[ $DO_FSYNC == 1 ]] && run_fsync
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))

# ---- table -------------------------------------------------------------------------

fld() { cut -d' ' -f"$1" <<<"$2"; }
thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }

{
  echo
  echo "outboxd benchmark  $STARTED  (bench/run.sh, ${ELAPSED}s; $REV; binaries in $BUILD)"
  echo "host: $(nproc) cores, $(psql --version | awk '{print "PostgreSQL", $3}'), $(redis-server --version | awk '{print "Redis", $3}' | tr -d 'v='), loopback;" \
    "PostgreSQL fsync=off as scripts/stack.sh starts it unless noted; load avg before $LOAD0, after $LOAD1"
  echo
  echo "1. DRAIN  ($N pre-filled events, $DRAIN_RUNS runs, ~250-byte payloads; median of $REPEAT runs, range = min-max; naive: 1 run)"
  echo "   CPU: seconds per 100k events of the relay, its PostgreSQL backend, Redis; busy = their sum / wall;"
  echo "   others = CPU used meanwhile by everything else on the machine (autovacuum, other jobs), in cores"
  printf '  %-44s %7s %6s %8s %15s  %6s %6s %6s %5s %6s %6s\n' "what" "events" "secs" "events/s" "range" \
    "relay" "PG" "Redis" "busy" "others" "RSS MB"
  row_drain() { # label key
    local l=${DRAIN[$2]}
    local range=${RANGE[$2]:-}
    [[ -n $range ]] && range="$(thousands "${range%-*}")-$(thousands "${range#*-}")"
    printf '  %-44s %7s %6.2f %8s %15s  %6s %6s %6s %4s%% %6s %6s\n' "$1" "$N" "$(fld 3 "$l")" \
      "$(thousands "$(fld 2 "$l")")" "$range" \
      "$(calc %.3f "$(fld 4 "$l") / $HZ / $N * 100000")" "$(calc %.3f "$(fld 5 "$l") / $HZ / $N * 100000")" \
      "$(calc %.3f "$(fld 6 "$l") / $HZ / $N * 100000")" \
      "$(calc %.0f "($(fld 4 "$l") + $(fld 5 "$l") + $(fld 6 "$l")) / $HZ / $(fld 3 "$l") * 100")" \
      "$(calc %.2f "$(fld 8 "$l") / $HZ / $(fld 3 "$l")")" "$(calc %.1f "$(fld 7 "$l") / 1024")"
  }
  row_base() { # label key
    local l=${DRAIN[$2]}
    local range=${RANGE[$2]:-}
    [[ -n $range ]] && range="$(thousands "${range%-*}")-$(thousands "${range#*-}")"
    printf '  %-44s %7s %6.2f %8s %15s\n' "$1" "$(fld 4 "$l")" "$(fld 3 "$l")" "$(thousands "$(fld 2 "$l")")" "$range"
  }
  row_drain "outboxd relay (defaults)" default
  row_drain "outboxd relay --max-batch-size 5000" batch5000
  row_base "naive loop, 200 ms sleep (capped at 10 s)" naive200
  row_base "naive loop, no sleep" naive0
  row_base "SQL ceiling: claim+mark 1000/stmt, no Redis" ceiling
  row_base "outboxd's SQL alone (fetch+mark), no Redis" sqlonly
  row_base "sketch: PG work overlapped with Redis work" overlap
  if [[ -n "${DRAIN[default_fsync]:-}" ]]; then
    row_drain "outboxd relay (defaults), fsync=on" default_fsync
    row_base "naive loop, no sleep, fsync=on" naive0_fsync
  fi
  ours=$(fld 2 "${DRAIN[default]}")
  printf '  ratios: ours/naive-no-sleep = %.1fx   ours/naive-200ms = %.0fx   ours/ceiling = %.2fx   ours(5000)/ceiling = %.2fx' \
    "$(calc %.3f "$ours / $(fld 2 "${DRAIN[naive0]}")")" "$(calc %.3f "$ours / $(fld 2 "${DRAIN[naive200]}")")" \
    "$(calc %.4f "$ours / $(fld 2 "${DRAIN[ceiling]}")")" \
    "$(calc %.4f "$(fld 2 "${DRAIN[batch5000]}") / $(fld 2 "${DRAIN[ceiling]}")")"
  if [[ -n "${DRAIN[default_fsync]:-}" ]]; then
    printf '   fsync=on: ours/naive-no-sleep = %.1fx' \
      "$(calc %.3f "$(fld 2 "${DRAIN[default_fsync]}") / $(fld 2 "${DRAIN[naive0_fsync]}")")"
  fi
  echo
  echo
  echo "2. STEADY LOAD  ($STEADY_RUNS runs, $STEADY_CONNS writer connections, one event per transaction, ${STEADY_S}s each;"
  echo "   latency = subscriber receipt - insert time stamped in the payload; backlog = unpublished rows at 1 s / end of load / max)"
  printf '  %-8s %-7s %9s %9s %8s %8s %9s %8s  %-18s %-6s %8s %7s  %s\n' "offered" "mode" "achieved" "received" \
    "p50 ms" "p99 ms" "p99.9 ms" "max ms" "backlog 1s/end/max" "grew" "relay %" "RSS MB" "check"
  for rate in 1000 10000; do
    for mode in notify poll; do
      l=${STEADY[$rate-$mode]}
      printf '  %-8s %-7s %9s %9s %8s %8s %9s %8s  %-18s %-6s %7s%% %7s  %s\n' "$rate/s" "$mode" "$(fld 1 "$l")/s" \
        "$(fld 2 "$l")" "$(fld 3 "$l")" "$(fld 4 "$l")" "$(fld 5 "$l")" "$(fld 6 "$l")" \
        "$(fld 7 "$l")/$(fld 8 "$l")/$(fld 9 "$l")" "$(fld 10 "$l")" "$(fld 11 "$l")" \
        "$(calc %.1f "$(fld 12 "$l") / 1024")" "$(fld 13 "$l")"
    done
  done
  echo "   (relay % = relay CPU over the load window, % of one core; grew = end backlog above the 1-s value and above 250 ms of load)"
  echo
  echo "3. PRODUCER COST  (inserts/s, autocommit, ${PROD_S}s each, median of $PROD_REPEAT; obx_load --rate 1000000 --pad $PAD;"
  echo "   relay not running; plain table = same columns and partial index, BIGSERIAL id, no triggers: no per-run seq, no NOTIFY)"
  printf '  %-6s %15s %18s %19s %21s %22s\n' "conns" "1 run, NOTIFY" "1 run, no NOTIFY" "1000 runs, NOTIFY" \
    "1000 runs, no NOTIFY" "plain table (no seq)"
  for conns in 1 8 32; do
    printf '  %-6s %15s %18s %19s %21s %22s\n' "$conns" "$(thousands "${PROD[$conns-1-on]:-0}")" \
      "$(thousands "${PROD[$conns-1-off]:-0}")" "$(thousands "${PROD[$conns-1000-on]:-0}")" \
      "$(thousands "${PROD[$conns-1000-off]:-0}")" "$(thousands "${PROD[$conns-plain]:-0}")"
  done
  echo
  if [[ -n "${TRANSPORT[plain]:-}" ]]; then
    echo "4. REDIS TRANSPORTS  (one Redis with a plaintext and a TLS port, this build's SQL and script; drain as in part 1,"
    echo "   median of $REPEAT, interleaved; steady 1,000/s as in part 2 ($REPEAT runs each, interleaved, the run with the"
    echo "   median p99 shown), the subscriber on the same transport as the relay;"
    echo "   baseline = the relay of ${BASELINE_REF:-v0.1.0}; wait: --redis-wait-replicas 1 with one replica attached)"
    printf '  %-42s %9s %15s %7s %7s %8s  %8s %7s %7s %8s %7s  %s\n' "variant" "drain/s" "range" "relay" "Redis" \
      "vs base" "achieved" "p50 ms" "p99 ms" "p99.9 ms" "relay %" "check"
    row_tr() { # label key
      local l=${TRANSPORT[$2]} st=${STEADY[tr-$2]:-}
      local range=${RANGE[tr-$2]}
      printf '  %-42s %9s %15s %7s %7s %7sx  %7s/s %7s %7s %8s %6s%%  %s\n' "$1" "$(thousands "$(fld 2 "$l")")" \
        "$(thousands "${range%-*}")-$(thousands "${range#*-}")" \
        "$(calc %.3f "$(fld 4 "$l") / $HZ / $N * 100000")" "$(calc %.3f "$(fld 6 "$l") / $HZ / $N * 100000")" \
        "$(calc %.2f "$(fld 2 "$l") / $(fld 2 "${TRANSPORT[base]}")")" "$(fld 1 "$st")" "$(fld 3 "$st")" \
        "$(fld 4 "$st")" "$(fld 5 "$st")" "$(fld 11 "$st")" "$(fld 13 "$st")"
    }
    row_tr "baseline relay, plaintext" base
    row_tr "this relay, plaintext" plain
    row_tr "this relay, TLS (rediss://)" tls
    row_tr "this relay, plaintext, replica attached" repl
    row_tr "this relay, --redis-wait-replicas 1" wait1
    echo "   (relay, Redis = CPU seconds per 100k events in the drain; relay % = relay CPU at 1,000/s, % of one core)"
    printf '   ratios: plaintext/baseline drain %.2fx, p99 %.2fx;  TLS/plaintext drain %.2fx, p99 %.2fx;  wait/replica drain %.2fx, p99 %.2fx\n' \
      "$(calc %.4f "$(fld 2 "${TRANSPORT[plain]}") / $(fld 2 "${TRANSPORT[base]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[tr-plain]}") / $(fld 4 "${STEADY[tr-base]}")")" \
      "$(calc %.4f "$(fld 2 "${TRANSPORT[tls]}") / $(fld 2 "${TRANSPORT[plain]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[tr-tls]}") / $(fld 4 "${STEADY[tr-plain]}")")" \
      "$(calc %.4f "$(fld 2 "${TRANSPORT[wait1]}") / $(fld 2 "${TRANSPORT[repl]}")")" \
      "$(calc %.4f "$(fld 4 "${STEADY[tr-wait1]}") / $(fld 4 "${STEADY[tr-repl]}")")"
    echo
  fi
} | tee "$WORK/table.txt"
