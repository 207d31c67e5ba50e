#!/usr/bin/env bash
# What authorization costs the gateway, run by `make bench` after bench/run.sh (or
# alone: bash bench/sse_auth.sh after `make all`). Starts its own throw-away
# PostgreSQL + Redis (loopback), a relay and a gateway, opens BENCH_SSE_STREAMS streams
# (BENCH_SSE_PER_RUN per run) with obx_sse, offers 1,000 events/s in all over those
# runs (so the gateway writes 1,000 x per-run frames a second), and measures
# commit->browser latency (payload insert time -> arrival at the client) for:
#   none     --auth none (the baseline, measured in the same run),
#   jwt      --auth jwt, every stream with its own Bearer ES256 token (npm jose),
#   forward  --auth forward, every stream with a cookie checked by a local backend.
# Modes alternate, BENCH_SSE_REPEAT times each; the medians are reported, with the
# time to open all streams and the gateway's CPU over the load window (steadier than
# latency on a shared machine: authorization adds work only when a stream opens and
# in the twice-a-second look at open streams, never per event). Environment:
#   BENCH_SSE_STREAMS (10000)  streams per measurement
#   BENCH_SSE_PER_RUN (10)     streams watching each run
#   BENCH_SSE_SECONDS (20)     seconds of load per measurement
#   BENCH_SSE_REPEAT (2)       measurements per mode
#   BENCH_SSE_MODES (none jwt forward)
set -Eeuo pipefail
trap 'echo "[bench-auth] FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
STREAMS=${BENCH_SSE_STREAMS:-10000}
SECS=${BENCH_SSE_SECONDS:-20}
REPEAT=${BENCH_SSE_REPEAT:-2}
MODES=${BENCH_SSE_MODES:-none jwt forward}
RUNS=$((STREAMS / ${BENCH_SSE_PER_RUN:-10}))
((RUNS >= 1)) || RUNS=1
PER_RUN=$((STREAMS / RUNS))
for b in outboxd obx_load obx_sse; do
  [[ -x "$BUILD/$b" ]] || { echo "bench: $BUILD/$b missing: run 'make all' first" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-bench-auth.XXXXXX")
chmod 755 "$WORK"
STACK="$WORK/stack"
cleanup() {
  local p
  for p in $(jobs -p); do kill -9 "$p" 2>/dev/null || true; done
  bash "$ROOT/scripts/stack.sh" stop "$STACK" >/dev/null 2>&1 || true
  [[ "${BENCH_KEEP:-0}" == 1 ]] && echo "bench: work directory kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '[bench-auth %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# CPU time of a process and its children (the gateway's workers), in ns.
cpu_ns() {
  local pids="$1 $(pgrep -P "$1" | tr '\n' ' ')" p
  for p in $pids; do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done | awk '{t += $1} END {printf "%.0f\n", t}'
}

say "starting PostgreSQL and Redis"
bash scripts/stack.sh start "$STACK" >"$WORK/stack.log" 2>&1 || { say "stack failed"; exit 1; }
# shellcheck disable=SC1091
. "$STACK/env"
"$BUILD/outboxd" migrate >/dev/null 2>&1
"$BUILD/outboxd" relay --stats-interval 60s >"$WORK/relay.log" 2>&1 &
RELAY=$!

node tests/jose/jwt.mjs keys "$WORK/keys"
TOKEN=$(node tests/jose/jwt.mjs sign "$WORK/keys" es '{"runs":["bench*"],"exp":"+86400","aud":"outboxd","sub":"bench","jti":"b1"}')
echo '{"cookies":{"bench":200},"max_age":30}' >"$WORK/state.json"
APORT=$(free_port)
node tests/jose/server.mjs auth "$APORT" "$WORK/state.json" >"$WORK/backend.out" 2>&1 &
for _ in $(seq 1 100); do grep -q listening "$WORK/backend.out" && break; sleep 0.05; done

measure() { # MODE REP
  local mode=$1 rep=$2 port flags=() client=() gw t0 opened out
  port=$(free_port)
  case $mode in
    jwt) flags=(--auth jwt --auth-jwks "$WORK/keys/jwks.json" --auth-audience outboxd); client=(--token "$TOKEN") ;;
    # A generous --auth-timeout: on a loaded machine the test backend (one node
    # process) answers 1,000 first calls slowly, and a timeout would tell streams to
    # come back later (fail closed), which is not what this measures.
    forward) flags=(--auth forward --auth-url "http://127.0.0.1:$APORT/check" --auth-timeout 10s)
      client=(--cookie "session=bench") ;;
  esac
  "$BUILD/outboxd" sse --listen "127.0.0.1:$port" --max-clients $((STREAMS + 1000)) --stats-interval 60s \
    "${flags[@]}" >"$WORK/sse-$mode-$rep.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
  rm -f "$WORK/ready"
  t0=$(date +%s%N)
  "$BUILD/obx_sse" --port "$port" --prefix "bench$rep$mode" --runs "$RUNS" --per-run "$PER_RUN" "${client[@]}" \
    --idle-ms 4000 --max-seconds $((SECS + 120)) --ready-file "$WORK/ready" --check >"$WORK/sse-$mode-$rep.out" 2>&1 &
  local cpid=$!
  for _ in $(seq 1 1200); do [[ -f "$WORK/ready" ]] && break; sleep 0.05; done
  opened=$(( ($(date +%s%N) - t0) / 1000000 ))
  [[ -f "$WORK/ready" ]] || say "  $mode: not every stream opened within 60 s"
  # Steady state only: wait until the gateway has read every run once (a run's first
  # read holds its live events; $RUNS of them queue behind one connection at start).
  local prev=-1 cur
  for _ in $(seq 1 120); do
    cur=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^outboxd_sse_replays_total/ {print $2}')
    [[ "$cur" == "$prev" ]] && ((${cur%.*} >= RUNS)) && break
    prev=$cur
    sleep 0.5
  done
  local c0 c1
  c0=$(cpu_ns "$gw")
  "$BUILD/obx_load" --rate 1000 --runs "$RUNS" --conns 8 --seconds "$SECS" --prefix "bench$rep$mode" >"$WORK/load-$mode-$rep.out"
  c1=$(cpu_ns "$gw")
  wait "$cpid" || true
  kill -TERM "$gw"; wait "$gw" || true
  out=$(cat "$WORK/sse-$mode-$rep.out")
  local cpu
  cpu=$(awk -v a="$c0" -v b="$c1" -v s="$SECS" 'BEGIN {printf "%.1f", (b - a) / 1e9 / s * 100}')
  echo "$mode $(kv p50 "$out") $(kv p99 "$out") $(kv p999 "$out") $(kv max "$out") $opened $(kv received "$out") $(kv bad_status "$out") $(kv lost "$out") $cpu" >>"$WORK/results"
  say "  $mode #$rep: opened $STREAMS streams in $opened ms; gateway CPU ${cpu}% of a core; $(cat "$WORK/load-$mode-$rep.out"); $out"
}

for ((rep = 1; rep <= REPEAT; rep++)); do
  for mode in $MODES; do
    say "measuring $mode ($rep/$REPEAT): $STREAMS streams over $RUNS runs, 1,000 events/s for ${SECS}s"
    measure "$mode" "$rep"
  done
done
kill -TERM "$RELAY" 2>/dev/null || true
wait "$RELAY" || true

col() { awk -v m="$1" -v c="$2" '$1 == m {print $c}' "$WORK/results" | median '?'; }
{
  echo
  echo "SSE AUTHORIZATION COST  ($(date -u '+%Y-%m-%d %H:%M:%S UTC'); bench/sse_auth.sh; $(git rev-parse --short HEAD 2>/dev/null || echo no git))"
  echo "  $STREAMS streams ($RUNS runs x $PER_RUN), 1,000 events/s offered for ${SECS}s, medians of $REPEAT; latency = insert -> client"
  echo "  gateway CPU = all its processes over the load window, % of one core; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '  %-8s %8s %8s %9s %8s %14s %10s %6s %8s\n' mode "p50 ms" "p99 ms" "p99.9 ms" "max ms" "open all (ms)" received lost "CPU %"
  for mode in $MODES; do
    printf '  %-8s %8s %8s %9s %8s %14s %10s %6s %8s\n' "$mode" "$(col "$mode" 2)" "$(col "$mode" 3)" "$(col "$mode" 4)" \
      "$(col "$mode" 5)" "$(col "$mode" 6)" "$(col "$mode" 7)" "$(col "$mode" 9)" "$(col "$mode" 10)"
  done
  base=$(col none 3)
  for mode in $MODES; do
    [[ $mode == none ]] && continue
    printf '  p99 %s - none = %+.2f ms; gateway CPU %s - none = %+.1f%% of a core\n' "$mode" \
      "$(awk -v a="$(col "$mode" 3)" -v b="$base" 'BEGIN {print a - b}')" "$mode" \
      "$(awk -v a="$(col "$mode" 10)" -v b="$(col none 10)" 'BEGIN {print a - b}')"
  done
} | tee "$WORK/table.txt"
