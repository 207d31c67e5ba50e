#!/usr/bin/env bash
# Gateway scale benchmark, run by `make bench-scale` (after `make all`). Starts its own
# PostgreSQL + Redis (loopback only) and a relay, and measures, each beside the
# single-process gateway (--workers 1) in the same run:
#   A. idle streams: SCALE_STREAMS (100,000) streams over 1,000 runs, opened by several
#      client processes from several loopback source addresses, held by one gateway
#      with SCALE_WORKERS (6) workers: gateway memory (RSS of all its processes) per
#      stream. The single process is given SCALE_SINGLE_STREAMS (15,000): a process
#      here may open at most 20,000 files. Then held SCALE_IDLE_HOLD (16) s: the
#      gateway's CPU for idle streams and its re-reads of each run's tail per heartbeat,
#      with PostgreSQL's CPU per re-read.
#   B. a hot run: SCALE_FANOUT (10,000) streams on one run while 100 events/s are
#      committed to it for SCALE_SECONDS (10), through a single process and through
#      SCALE_HOT_WORKERS (one per core) workers: every stream must get every event
#      once, in order (obx_sse --check); reports frames/s delivered, commit->browser
#      latency, and the CPU of the gateway and of the checking clients over the load.
#      Beside it, the floor: bench/fanout_floor.c, a server that only writes the same
#      frames to the same clients with the same coalescing (no Redis, PostgreSQL or
#      HTTP library), i.e. what the kernel's loopback TCP path alone costs here.
#   C. per-event costs, the unit costs of docs/SCALING.md: SCALE_EVENT_RATE (1,000)
#      events/s over 100 runs for SCALE_SECONDS, relayed and watched by one gateway
#      process with one checked stream per run: CPU per event of the relay, of
#      PostgreSQL (all its processes: the producers' inserts, the relay's fetch and
#      mark, the gateway's reads), of Redis and of the gateway; again with two gateway
#      processes (Redis's cost per delivery to one more). Then the relay's
#      ceiling: with the relay stopped, SCALE_DRAIN_EVENTS (100,000) events inserted as
#      fast as 4 connections go (PostgreSQL CPU per insert, inserts/s), then the relay
#      started on that backlog: drain rate, and relay, PostgreSQL and Redis CPU per
#      event while it drains.
# Environment: SCALE_PARTS ("idle hot events") picks parts; SCALE_BASE=/path/to/outboxd adds
# rows for another build (e.g. the previous commit's) measured in the same run;
# SCALE_COALESCE ("50ms") adds hot-run rows with those --stream-coalesce values (and
# the floor's);
# SCALE_REPEAT (1) repeats part B (rows alternate); BENCH_KEEP=1 keeps the work
# directory.
# Prints one table.
set -Eeuo pipefail
trap 'echo "[scale] FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
STREAMS=${SCALE_STREAMS:-100000}
SINGLE=${SCALE_SINGLE_STREAMS:-15000}
WORKERS=${SCALE_WORKERS:-6}
FANOUT=${SCALE_FANOUT:-10000}
HOT_WORKERS=${SCALE_HOT_WORKERS:-$(nproc)}
SECONDS_LOAD=${SCALE_SECONDS:-10}
PARTS=${SCALE_PARTS:-idle hot events}
IDLE_HOLD=${SCALE_IDLE_HOLD:-16}
EVENT_RATE=${SCALE_EVENT_RATE:-1000}
DRAIN_EVENTS=${SCALE_DRAIN_EVENTS:-100000}
REPEAT=${SCALE_REPEAT:-1}
COALESCE=${SCALE_COALESCE-50ms}
BASE_BIN=${SCALE_BASE:-}
RATE=100         # events/s on the hot run
IDLE_RUNS=1000   # runs the idle streams spread over
PER_CLIENT=16000 # idle streams per client process (each may open at most 20,000 files)
HOT_PER_CLIENT=5000

for b in outboxd obx_load obx_sse; do
  [[ -x "$BUILD/$b" ]] || { echo "scale: $BUILD/$b missing: run 'make all' first" >&2; exit 1; }
done
[[ -z "$BASE_BIN" || -x "$BASE_BIN" ]] || { echo "scale: SCALE_BASE=$BASE_BIN is not executable" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-scale.XXXXXX")
chmod 755 "$WORK"
GW=0 RELAY=0
cleanup() {
  local p
  for p in $(jobs -p); do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  ((GW > 0)) && { pkill -9 -P "$GW" 2>/dev/null || true; kill -9 "$GW" 2>/dev/null || true; }
  bash "$ROOT/scripts/stack.sh" stop "$WORK/stack" >/dev/null 2>&1 || true
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "scale: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '[scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

say "compiling bench/fanout_floor.c"
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -o "$WORK/fanout_floor" "$ROOT/bench/fanout_floor.c"
say "starting PostgreSQL, Redis and a relay"
bash "$ROOT/scripts/stack.sh" start "$WORK/stack" >"$WORK/stack.log" 2>&1 || die "stack: $(tail -5 "$WORK/stack.log")"
# shellcheck disable=SC1091
. "$WORK/stack/env"
"$BUILD/outboxd" migrate >/dev/null
# The hot run's events reach the gateway the way they do in production: relayed to
# Redis as they commit (without a relay they would only arrive by the gateway's
# periodic re-read of each run's tail).
"$BUILD/outboxd" relay --stats-interval 0 >"$WORK/relay.log" 2>&1 &
RELAY=$!
port=$((20000 + RANDOM % 10000))

# CPU time (ns) of processes and all their threads, from schedstat; gone ones count 0.
cpu_ns() {
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done | awk '{t += $1} END {printf "%.0f\n", t}'
}
tree() { echo "$1" $(pgrep -P "$1" || true); } # a gateway and its workers
rss_kb() {
  local p total=0
  for p in "$@"; do total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo "$total"
}
kv() { grep -o " $1=[0-9.]*" <<<" $2" | head -1 | cut -d= -f2; }
q() { psql -X -qtA "$DATABASE_URL" -c "$1"; }
# CPU time (ns) of PostgreSQL: the postmaster, its live processes, and those it has
# reaped (a producer's backend ends with its connection; its CPU moves to cutime).
pg_cpu_ns() {
  local pm reaped
  pm=$(head -1 "$PGDATA/postmaster.pid")
  reaped=$(awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.0f\n", ($12 + $13 + $14 + $15) * 1e9 / hz }' \
    "/proc/$pm/stat")
  echo $((reaped + $(cpu_ns $(pgrep -P "$pm" || true))))
}
wait_drained() { # wait_drained SECONDS
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    [[ $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL") == 0 ]] && return 0
    sleep 0.25
  done
  die "backlog not drained in $1 s"
}

start_gw() { # BIN WORKERS [FLAGS...]
  local bin=$1 w=$2
  shift 2
  "$bin" sse --listen "127.0.0.1:$port" --workers "$w" --max-clients 1000000 \
    --stats-interval 0 "$@" 2>"$WORK/gw.log" &
  GW=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return 0; sleep 0.1; done
  die "gateway did not start: $(tail -3 "$WORK/gw.log")"
}
stop_gw() {
  kill -TERM "$GW" 2>/dev/null || true
  wait "$GW" 2>/dev/null || true
  GW=0
  port=$((port + 1))
}
gw_metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
gw_streams() { gw_metric outboxd_sse_streams; }

# A: idle streams. idle BIN WORKERS STREAMS ->
#   "streams rss_before_kb rss_after_kb bytes_per_stream open_s bytes_per_stream_all
#    idle_cores idle_us_per_stream_s rereads_per_s pg_us_per_reread"
# (bytes per stream: the growth of RSS over the streams; _all: all of RSS over them)
idle() {
  local bin=$1 w=$2 n=$3 procs i per runs_per
  start_gw "$bin" "$w"
  sleep 1
  local rss0 t0
  rss0=$(rss_kb $(tree "$GW"))
  # n streams over IDLE_RUNS runs, per a run; each client process takes as many
  # whole runs as fit in PER_CLIENT streams.
  per=$((n / IDLE_RUNS))
  ((per * IDLE_RUNS == n)) || die "$n streams do not spread evenly over $IDLE_RUNS runs"
  procs=1
  while ((IDLE_RUNS % procs != 0 || IDLE_RUNS / procs * per > PER_CLIENT)); do procs=$((procs + 1)); done
  runs_per=$((IDLE_RUNS / procs))
  t0=$EPOCHREALTIME
  local cps=()
  for ((i = 0; i < procs; i++)); do
    # Each client process watches its own share of the runs, from its own address.
    "$BUILD/obx_sse" --port "$port" --source "127.0.0.$((2 + i))" --prefix "idle$i" --runs "$runs_per" \
      --per-run "$per" --reconnect-ms 1000 --max-seconds 900 --max-opening 256 >"$WORK/idle-$i.out" 2>&1 &
    cps+=($!)
  done
  local want=$((per * runs_per * procs)) got=0
  for _ in $(seq 1 2400); do
    got=$(gw_streams)
    [[ "${got:-0}" -ge "$want" ]] && break
    sleep 0.25
  done
  local open_s
  open_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  sleep 3 # let allocations settle
  local rss1
  rss1=$(rss_kb $(tree "$GW"))
  got=$(gw_streams)
  # Held idle for IDLE_HOLD seconds (more than a heartbeat): the gateway's CPU for
  # heartbeats and its re-reads of each run's tail, and PostgreSQL's CPU meanwhile
  # (which also covers the relay's idle polls: an upper bound per re-read).
  local g0 p0 rd0 g1 p1 rd1 gpids
  gpids=$(tree "$GW")
  g0=$(cpu_ns $gpids) p0=$(pg_cpu_ns) rd0=$(gw_metric outboxd_sse_replays_total)
  sleep "$IDLE_HOLD"
  g1=$(cpu_ns $gpids) p1=$(pg_cpu_ns) rd1=$(gw_metric outboxd_sse_replays_total)
  kill "${cps[@]}" 2>/dev/null || true
  wait "${cps[@]}" 2>/dev/null || true
  stop_gw
  local div=$((${got:-0} > 0 ? ${got:-0} : 1))
  echo "${got:-0} $rss0 $rss1 $(((rss1 - rss0) * 1024 / div)) $open_s $((rss1 * 1024 / div))" \
    "$(awk -v g="$((g1 - g0))" -v p="$((p1 - p0))" -v r="$(( ${rd1%.*} - ${rd0%.*} ))" -v h="$IDLE_HOLD" -v n="$div" \
      'BEGIN { printf "%.3f %.3f %.1f %s", g / 1e9 / h, g / 1e3 / h / n, r / h, (r > 0 ? sprintf("%.1f", p / 1e3 / r) : "?") }')"
}

# B: one hot run, watched by n streams from client processes of HOT_PER_CLIENT each.
# start_clients PORT PREFIX N [--check]: clients in CPS, waits until all streams are open.
start_clients() {
  local port_=$1 prefix=$2 n=$3 procs i
  shift 3
  procs=$(((n + HOT_PER_CLIENT - 1) / HOT_PER_CLIENT))
  CPS=()
  for ((i = 0; i < procs; i++)); do
    rm -f "$WORK/hot-$i.ready"
    "$BUILD/obx_sse" --port "$port_" --source "127.0.1.$((2 + i))" --prefix "$prefix" --runs 1 \
      --per-run $((n / procs)) --reconnect-ms 500 --idle-ms 5000 --max-seconds $((SECONDS_LOAD + 120)) \
      --max-opening 256 --ready-file "$WORK/hot-$i.ready" "$@" >"$WORK/hot-$i.out" 2>"$WORK/hot-$i.err" &
    CPS+=($!)
  done
  for ((i = 0; i < procs; i++)); do
    for _ in $(seq 1 600); do [[ -f "$WORK/hot-$i.ready" ]] && break; sleep 0.1; done
  done
}
# clients_result -> "received lost dup disorder p50 p99 max": sums, and the worst client
# process's quantiles (each process sees a share of the streams).
clients_result() {
  local received=0 lost=0 dup=0 dis=0 p50=0 p99=0 max=0 l i
  for ((i = 0; i < ${#CPS[@]}; i++)); do
    l=$(cat "$WORK/hot-$i.out")
    received=$((received + $(kv received "$l")))
    lost=$((lost + $(kv lost "$l")))
    dup=$((dup + $(kv duplicates "$l")))
    dis=$((dis + $(kv out_of_order "$l")))
    p50=$(awk -v a="$p50" -v b="$(kv p50 "$l")" 'BEGIN { print (b > a ? b : a) }')
    p99=$(awk -v a="$p99" -v b="$(kv p99 "$l")" 'BEGIN { print (b > a ? b : a) }')
    max=$(awk -v a="$max" -v b="$(kv max "$l")" 'BEGIN { print (b > a ? b : a) }')
  done
  echo "$received $lost $dup $dis $p50 $p99 $max"
}
# hot_line CLIENTS_RESULT EXPECTED SERVER_CPU_NS CLIENT_CPU_NS WINDOW_S WRITES EVENTS RELAY_NS REDIS_NS ->
#   "received expected lost dup disorder p50 p99 max frames_per_s server_cores server_us_per_frame
#    frames_per_write client_cores relay_us_per_event redis_us_per_event server_us_per_write"
hot_line() {
  read -r received lost dup dis p50 p99 max <<<"$1"
  awk -v r="$received" -v e="$2" -v lo="$lost" -v du="$dup" -v di="$dis" -v p50="$p50" -v p99="$p99" -v mx="$max" \
    -v s="$SECONDS_LOAD" -v c="$3" -v k="$4" -v w="$5" -v wr="$6" -v ev="$7" -v rl="$8" -v rd="$9" \
    'BEGIN { printf "%d %d %d %d %d %.1f %.1f %.1f %.0f %.2f %.2f %s %.2f %s %s %s\n",
             r, e, lo, du, di, p50, p99, mx, r / s, c / 1e9 / w, (r > 0 ? c / 1e3 / r : 0),
             (wr > 0 ? sprintf("%.1f", r / wr) : "?"), k / 1e9 / w,
             (rl == "" ? "-" : sprintf("%.1f", rl / 1e3 / ev)), (rd == "" ? "-" : sprintf("%.1f", rd / 1e3 / ev)),
             (wr > 0 ? sprintf("%.1f", c / 1e3 / wr) : "?") }'
}

# hot BIN WORKERS STREAMS [GATEWAY FLAGS...]: the gateway, events committed by obx_load
# and relayed; every stream checked against the table.
hot() {
  local bin=$1 w=$2 n=$3
  shift 3
  start_gw "$bin" "$w" "$@"
  local run="hot$w$RANDOM"
  start_clients "$port" "$run" "$n" --check
  local gpids c0 k0 r0 d0 w0 t0 c1 k1 r1 d1 w1 t1
  gpids=$(tree "$GW")
  # Workers publish their counters every 250 ms: the writes are read after that.
  sleep 0.3
  w0=$(gw_metric outboxd_sse_stream_writes_total)
  c0=$(cpu_ns $gpids) k0=$(cpu_ns "${CPS[@]}") r0=$(cpu_ns "$RELAY") d0=$(cpu_ns "$REDIS_PID")
  t0=$EPOCHREALTIME
  # obx_load names its runs PREFIX-0..: one run, the one the streams watch.
  "$BUILD/obx_load" --rate "$RATE" --runs 1 --conns 2 --seconds "$SECONDS_LOAD" --prefix "$run" >"$WORK/hot.load"
  sleep 1 # the last events reach the browsers
  c1=$(cpu_ns $gpids) k1=$(cpu_ns "${CPS[@]}") r1=$(cpu_ns "$RELAY") d1=$(cpu_ns "$REDIS_PID")
  t1=$EPOCHREALTIME
  sleep 0.3
  w1=$(gw_metric outboxd_sse_stream_writes_total)
  for p in "${CPS[@]}"; do wait "$p" || true; done
  stop_gw
  local inserted
  inserted=$(kv inserted "$(cat "$WORK/hot.load")")
  # Frames per write from the gateway's counter of writes to streams (not in older builds).
  hot_line "$(clients_result)" "$((inserted * n))" "$((c1 - c0))" "$((k1 - k0))" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$(( ${w1:-0} - ${w0:-0} ))" "$inserted" \
    "$((r1 - r0))" "$((d1 - d0))"
}

# floor WORKERS STREAMS COALESCE_MS: bench/fanout_floor, the kernel's share alone.
floor() {
  local w=$1 n=$2 co=$3 fl
  rm -f "$WORK/go"
  "$WORK/fanout_floor" --port "$port" --streams "$n" --workers "$w" --rate "$RATE" --seconds "$SECONDS_LOAD" \
    --coalesce-ms "$co" --go-file "$WORK/go" 2>"$WORK/floor.err" &
  fl=$!
  start_clients "$port" "floor" "$n"
  local k0 k1 t0
  k0=$(cpu_ns "${CPS[@]}")
  t0=$EPOCHREALTIME
  touch "$WORK/go"
  wait "$fl" || true
  k1=$(cpu_ns "${CPS[@]}")
  local t1=$EPOCHREALTIME
  for p in "${CPS[@]}"; do wait "$p" || true; done
  port=$((port + 1))
  local cpu writes
  cpu=$(awk -F'cpu_us=' '{t += $2} END {printf "%.0f", t * 1000}' "$WORK/floor.err")
  writes=$(grep -o 'writes=[0-9]*' "$WORK/floor.err" | awk -F= '{t += $2} END {print t}')
  hot_line "$(clients_result)" "$((SECONDS_LOAD * RATE * n))" "$cpu" "$((k1 - k0))" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$writes" 1 "" ""
}

# C1: steady load, NGW gateway processes (one each), every run with one stream on each
# -> "inserted insert_rate relay_us pg_us redis_us gw_us received lost dup disorder p99"
#    (gw_us: all the gateway processes' CPU per event)
events_steady() {
  local ngw=$1 prefix="ev$RANDOM" k ports="" gws=()
  for ((k = 0; k < ngw; k++)); do
    start_gw "$BUILD/outboxd" 1
    gws+=("$GW")
    ports+="${ports:+,}$port"
    port=$((port + 1))
  done
  CPS=()
  rm -f "$WORK/ev.ready"
  "$BUILD/obx_sse" --ports "$ports" --prefix "$prefix" --runs 100 --per-run "$ngw" --idle-ms 5000 \
    --max-seconds $((SECONDS_LOAD + 120)) --ready-file "$WORK/ev.ready" --check >"$WORK/hot-0.out" 2>"$WORK/hot-0.err" &
  CPS+=($!)
  for _ in $(seq 1 300); do [[ -f "$WORK/ev.ready" ]] && break; sleep 0.1; done
  sleep 1 # every run's first read is done
  local gpids g0 r0 p0 d0 g1 r1 p1 d1 t0 t1
  gpids=$(for k in "${gws[@]}"; do tree "$k"; done)
  g0=$(cpu_ns $gpids) r0=$(cpu_ns "$RELAY") p0=$(pg_cpu_ns) d0=$(cpu_ns "$REDIS_PID")
  t0=$EPOCHREALTIME
  "$BUILD/obx_load" --rate "$EVENT_RATE" --runs 100 --conns 4 --seconds "$SECONDS_LOAD" --prefix "$prefix" \
    --pad 200 >"$WORK/ev.load"
  wait_drained 60
  sleep 1 # the last events reach the browsers
  g1=$(cpu_ns $gpids) r1=$(cpu_ns "$RELAY") p1=$(pg_cpu_ns) d1=$(cpu_ns "$REDIS_PID")
  t1=$EPOCHREALTIME
  wait "${CPS[@]}" || true
  for k in "${gws[@]}"; do GW=$k; stop_gw; done
  local n r
  n=$(kv inserted "$(cat "$WORK/ev.load")")
  read -r received lost dup dis _ p99 _ <<<"$(clients_result)"
  awk -v n="$n" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v r="$((r1 - r0))" -v p="$((p1 - p0))" \
    -v d="$((d1 - d0))" -v g="$((g1 - g0))" -v rc="$received" -v lo="$lost" -v du="$dup" -v di="$dis" -v p99="$p99" \
    -v rate="$(kv rate "$(cat "$WORK/ev.load")")" \
    'BEGIN { printf "%d %.0f %.1f %.1f %.1f %.1f %d %d %d %d %.1f\n", n, rate, r / 1e3 / n, p / 1e3 / n, d / 1e3 / n,
             g / 1e3 / n, rc, lo, du, di, p99 }'
}

# C2: the relay's ceiling -> "inserted insert_rate pg_us_per_insert drain_rate relay_us pg_us redis_us"
events_drain() {
  kill -TERM "$RELAY" 2>/dev/null || true
  wait "$RELAY" 2>/dev/null || true
  local p0 p1 t0 t1 out
  p0=$(pg_cpu_ns) t0=$EPOCHREALTIME
  "$BUILD/obx_load" --rate 1000000 --runs 100 --conns 4 --count "$DRAIN_EVENTS" --prefix "dr$RANDOM" --pad 200 \
    >"$WORK/dr.load"
  p1=$(pg_cpu_ns) t1=$EPOCHREALTIME
  out="$(kv inserted "$(cat "$WORK/dr.load")") $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') $((p1 - p0))"
  q "VACUUM ANALYZE run_outbox" >/dev/null
  local r1 d0 d1
  p0=$(pg_cpu_ns) d0=$(cpu_ns "$REDIS_PID") t0=$EPOCHREALTIME
  "$BUILD/outboxd" relay --stats-interval 0 >>"$WORK/relay.log" 2>&1 &
  RELAY=$!
  wait_drained 600
  r1=$(cpu_ns "$RELAY") p1=$(pg_cpu_ns) d1=$(cpu_ns "$REDIS_PID") t1=$EPOCHREALTIME
  read -r n ins_s ins_ns <<<"$out"
  awk -v n="$n" -v is="$ins_s" -v ip="$ins_ns" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    -v r="$r1" -v p="$((p1 - p0))" -v d="$((d1 - d0))" \
    'BEGIN { printf "%d %.0f %.1f %.0f %.1f %.1f %.1f\n", n, n / is, ip / 1e3 / n, n / w, r / 1e3 / n, p / 1e3 / n, d / 1e3 / n }'
}

declare -A A B
idle_rows=() hot_rows=()
if [[ " $PARTS " == *" idle "* ]]; then
  idle_rows=("new 1 $SINGLE" "new $WORKERS $STREAMS")
  [[ -n "$BASE_BIN" ]] && idle_rows+=("base $WORKERS $STREAMS")
fi
if [[ " $PARTS " == *" hot "* ]]; then
  # which workers [gateway flags]
  # "which workers [gateway flags]"; "floor workers coalesce_ms" for bench/fanout_floor
  hot_rows=("new 1" "new $HOT_WORKERS" "floor $HOT_WORKERS 10")
  for c in $COALESCE; do
    hot_rows+=("new $HOT_WORKERS --stream-coalesce $c" "floor $HOT_WORKERS ${c%ms}")
  done
  [[ -n "$BASE_BIN" ]] && hot_rows+=("base 1" "base $HOT_WORKERS")
fi
binof() { [[ $1 == base ]] && echo "$BASE_BIN" || echo "$BUILD/outboxd"; }
for row in "${idle_rows[@]}"; do
  read -r which w n <<<"$row"
  say "A: $n idle streams, $which build, --workers $w"
  A[$row]=$(idle "$(binof "$which")" "$w" "$n")
  say "   ${A[$row]}"
done
for ((rep = 1; rep <= REPEAT; rep++)); do
  for row in "${hot_rows[@]}"; do
    read -r which w flags <<<"$row"
    say "B: hot run, $FANOUT streams, $which, --workers $w $flags (repetition $rep)"
    if [[ $which == floor ]]; then
      B[$row $rep]=$(floor "$w" "$FANOUT" "$flags")
    else
      # shellcheck disable=SC2086
      B[$row $rep]=$(hot "$(binof "$which")" "$w" "$FANOUT" $flags)
    fi
    say "   ${B[$row $rep]}"
  done
done

C_STEADY="" C_STEADY2="" C_DRAIN=""
if [[ " $PARTS " == *" events "* ]]; then
  say "C: $EVENT_RATE events/s over 100 runs for ${SECONDS_LOAD}s, relayed, one gateway process, one stream per run"
  C_STEADY=$(events_steady 1)
  say "   $C_STEADY"
  say "C: the same with two gateway processes, each with one stream per run (Redis delivers each event twice)"
  C_STEADY2=$(events_steady 2)
  say "   $C_STEADY2"
  say "C: the relay's ceiling: $DRAIN_EVENTS events inserted with the relay stopped, then drained"
  C_DRAIN=$(events_drain)
  say "   $C_DRAIN"
fi

f() { cut -d' ' -f"$1" <<<"$2"; }
label() {
  case $1 in
    floor) echo "floor (bench/fanout_floor.c) --workers $2 --coalesce-ms $3" ;;
    base) echo "SCALE_BASE --workers $2${3:+ $3}$([[ $2 == 1 ]] && echo " (single process)")" ;;
    *) echo "this build --workers $2${3:+ $3}$([[ $2 == 1 ]] && echo " (single process)")" ;;
  esac
}
echo
echo "gateway scale ($(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); load avg $(cut -d' ' -f1-3 /proc/loadavg))"
if ((${#idle_rows[@]})); then
  echo
  echo "held idle ${IDLE_HOLD}s after opening (heartbeat 15s): gateway CPU, its re-reads of each run's tail, PostgreSQL CPU per re-read (an upper bound: the relay's idle polls count too)"
  echo
  echo "| idle streams over $IDLE_RUNS runs | streams held | gateway RSS before -> after (KB) | bytes per stream (growth) | bytes per stream (all RSS) | open time (s) | idle gateway CPU (cores) | µs per stream per second | re-reads/s | PostgreSQL µs per re-read |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for row in "${idle_rows[@]}"; do
    read -r which w n <<<"$row"
    v=${A[$row]}
    echo "| $(label "$which" "$w"), $n streams | $(f 1 "$v") | $(f 2 "$v") -> $(f 3 "$v") | $(f 4 "$v") | $(f 6 "$v") | $(f 5 "$v") | $(f 7 "$v") | $(f 8 "$v") | $(f 9 "$v") | $(f 10 "$v") |"
  done
fi
if ((${#hot_rows[@]})); then
  echo
  echo "hot run: $FANOUT streams on one run, $RATE events/s for ${SECONDS_LOAD}s ($((FANOUT * RATE)) frames/s offered); latency = commit->browser (worst client process); CPU in cores over the load"
  echo
  echo "| server | frames received / expected | lost | dup | out of order | p50 ms | p99 ms | max ms | frames/s | server CPU (cores) | server µs/frame | frames/write | server µs/write | clients CPU (cores) | relay µs/event | Redis µs/event |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for ((rep = 1; rep <= REPEAT; rep++)); do
    for row in "${hot_rows[@]}"; do
      read -r which w flags <<<"$row"
      v=${B[$row $rep]}
      echo "| $(label "$which" "$w" "$flags") | $(f 1 "$v") / $(f 2 "$v") | $(f 3 "$v") | $(f 4 "$v") | $(f 5 "$v") | $(f 6 "$v") | $(f 7 "$v") | $(f 8 "$v") | $(f 9 "$v") | $(f 10 "$v") | $(f 11 "$v") | $(f 12 "$v") | $(f 16 "$v") | $(f 13 "$v") | $(f 14 "$v") | $(f 15 "$v") |"
    done
  done
fi
if [[ -n "$C_STEADY" ]]; then
  echo
  echo "per-event costs: CPU per event in µs (PostgreSQL = all its processes); $EVENT_RATE events/s over 100 runs with ~250-byte payloads"
  echo
  echo "| measurement | events | events/s | relay µs/event | PostgreSQL µs/event | Redis µs/event | gateway µs/event | streams: received, lost, dup, out of order | p99 ms |"
  echo "|---|---|---|---|---|---|---|---|---|"
  v=$C_STEADY
  echo "| steady load, relayed, 1 gateway process with 1 stream per run | $(f 1 "$v") | $(f 2 "$v") | $(f 3 "$v") | $(f 4 "$v") | $(f 5 "$v") | $(f 6 "$v") | $(f 7 "$v"), $(f 8 "$v"), $(f 9 "$v"), $(f 10 "$v") | $(f 11 "$v") |"
  v=$C_STEADY2
  echo "| the same, 2 gateway processes with 1 stream per run each (gateway = both) | $(f 1 "$v") | $(f 2 "$v") | $(f 3 "$v") | $(f 4 "$v") | $(f 5 "$v") | $(f 6 "$v") | $(f 7 "$v"), $(f 8 "$v"), $(f 9 "$v"), $(f 10 "$v") | $(f 11 "$v") |"
  v=$C_DRAIN
  echo "| inserts alone (4 connections, one transaction each, relay stopped) | $(f 1 "$v") | $(f 2 "$v") | - | $(f 3 "$v") | - | - | - | - |"
  echo "| drain of that backlog by one relay (its ceiling) | $(f 1 "$v") | $(f 4 "$v") | $(f 5 "$v") | $(f 6 "$v") | $(f 7 "$v") | - | - | - |"
  echo
  echo "Redis CPU per delivery to one more subscribed gateway process: $(awk -v a="$(f 5 "$C_STEADY")" -v b="$(f 5 "$C_STEADY2")" 'BEGIN { printf "%.1f", b - a }') µs per event (second row minus first)"
fi
