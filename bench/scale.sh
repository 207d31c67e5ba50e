#!/usr/bin/env bash
# Gateway scale benchmark, run by `make bench-scale` (after `make all`). Starts its own
# PostgreSQL + Redis (loopback only) and measures, each beside the single-process
# gateway (--workers 1, the v0.1.0 shape) in the same run:
#   A. idle streams: SCALE_STREAMS (100,000) streams over 1,000 runs, opened by several
#      client processes from several loopback source addresses, held by one gateway
#      with SCALE_WORKERS (6) workers: gateway memory (all processes) per stream.
#      The single process is given SCALE_SINGLE_STREAMS (15,000): a process here may
#      open at most 20,000 files.
#   B. a hot run: SCALE_FANOUT (10,000) streams on one run while 100 events/s are
#      committed to it for SCALE_SECONDS (10): every stream must get every event once,
#      in order; reports frames/s delivered and the commit->browser p99.
# Prints one table. BENCH_KEEP=1 keeps the work directory.
set -Eeuo pipefail
trap 'echo "[scale] FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
STREAMS=${SCALE_STREAMS:-100000}
SINGLE=${SCALE_SINGLE_STREAMS:-15000}
WORKERS=${SCALE_WORKERS:-6}
FANOUT=${SCALE_FANOUT:-10000}
SECONDS_LOAD=${SCALE_SECONDS:-10}
PER_CLIENT=16000 # streams per client process (each may open at most 20,000 files)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-scale.XXXXXX")
chmod 755 "$WORK"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pkill -9 -P "$GW" 2>/dev/null || true
  bash "$ROOT/scripts/stack.sh" stop "$WORK/stack" >/dev/null 2>&1 || true
  [[ "${BENCH_KEEP:-0}" == 1 ]] && echo "scale: work directory kept: $WORK" >&2 || rm -rf "$WORK"
}
GW=0
trap cleanup EXIT
say() { printf '[scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bash "$ROOT/scripts/stack.sh" start "$WORK/stack" >/dev/null
. "$WORK/stack/env"
"$BUILD/outboxd" migrate >/dev/null
port=$((20000 + RANDOM % 10000))

rss_tree_kb() {
  local p total=0
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
cpu_tree_s() { # CPU seconds used so far by a process and its children (alive ones)
  local p total=0
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}
start_gw() { # WORKERS
  "$BUILD/outboxd" sse --listen "127.0.0.1:$port" --workers "$1" --max-clients 1000000 \
    --stats-interval 0 2>"$WORK/gw-$1.log" &
  GW=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && return 0; sleep 0.1; done
  say "gateway did not start: $(tail -3 "$WORK/gw-$1.log")"
  exit 1
}
stop_gw() {
  kill -TERM "$GW" 2>/dev/null || true
  wait "$GW" 2>/dev/null || true
  GW=0
}
gw_streams() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^outboxd_sse_streams / {print $2}'; }

# A: idle streams. idle WORKERS STREAMS -> "streams rss_before_kb rss_after_kb bytes_per_stream open_s"
idle() {
  local w=$1 n=$2 procs i per
  start_gw "$w"
  sleep 1
  local rss0 t0
  rss0=$(rss_tree_kb "$GW")
  procs=$(((n + PER_CLIENT - 1) / PER_CLIENT))
  per=$((n / procs))
  t0=$EPOCHREALTIME
  local cps=()
  for ((i = 0; i < procs; i++)); do
    # 1,000 runs in all: each process watches its own share of them.
    "$BUILD/obx_sse" --port "$port" --source "127.0.0.$((2 + i))" --prefix "idle$i" --runs $((1000 / procs)) \
      --per-run $((per / (1000 / procs))) --reconnect-ms 1000 --max-seconds 600 \
      --ready-file "$WORK/idle-$w-$i.ready" >"$WORK/idle-$w-$i.out" 2>&1 &
    cps+=($!)
    pids+=($!)
  done
  local want=$(((per / (1000 / procs)) * (1000 / procs) * procs)) got=0
  for _ in $(seq 1 1200); do
    got=$(gw_streams)
    [[ "${got:-0}" -ge "$want" ]] && break
    sleep 0.25
  done
  local open_s
  open_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  sleep 3 # let allocations settle
  local rss1
  rss1=$(rss_tree_kb "$GW")
  got=$(gw_streams)
  for p in "${cps[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  stop_gw
  echo "${got:-0} $rss0 $rss1 $(((rss1 - rss0) * 1024 / (${got:-1} > 0 ? ${got:-1} : 1))) $open_s"
}

# B: one hot run. hot WORKERS STREAMS -> "received expected lost dup disorder p99_ms frames_per_s gw_cpu_s"
hot() {
  local w=$1 n=$2 procs i
  start_gw "$w"
  local run="hot-$w-$RANDOM"
  procs=$(((n + 4999) / 5000))
  local cps=()
  for ((i = 0; i < procs; i++)); do
    "$BUILD/obx_sse" --port "$port" --source "127.0.1.$((2 + i))" --prefix "$run" --runs 1 \
      --per-run $((n / procs)) --reconnect-ms 500 --idle-ms 5000 --max-seconds $((SECONDS_LOAD + 120)) \
      --ready-file "$WORK/hot-$w-$i.ready" --check >"$WORK/hot-$w-$i.out" 2>"$WORK/hot-$w-$i.err" &
    cps+=($!)
    pids+=($!)
  done
  for ((i = 0; i < procs; i++)); do
    for _ in $(seq 1 600); do [[ -f "$WORK/hot-$w-$i.ready" ]] && break; sleep 0.1; done
  done
  local c0 t0
  c0=$(cpu_tree_s "$GW")
  t0=$EPOCHREALTIME
  # obx_load names its runs PREFIX-0..: one run, the one the streams watch.
  "$BUILD/obx_load" --rate 100 --runs 1 --conns 2 --seconds "$SECONDS_LOAD" --prefix "$run" >"$WORK/hot-$w.load"
  for p in "${cps[@]}"; do wait "$p" || true; done
  local c1 t1
  c1=$(cpu_tree_s "$GW")
  t1=$EPOCHREALTIME
  stop_gw
  local inserted received=0 lost=0 dup=0 dis=0 p99=0
  inserted=$(grep -o 'inserted=[0-9]*' "$WORK/hot-$w.load" | cut -d= -f2)
  for ((i = 0; i < procs; i++)); do
    local l
    l=$(cat "$WORK/hot-$w-$i.out")
    received=$((received + $(grep -o ' received=[0-9]*' <<<"$l" | cut -d= -f2)))
    lost=$((lost + $(grep -o 'lost=[0-9]*' <<<"$l" | cut -d= -f2)))
    dup=$((dup + $(grep -o 'duplicates=[0-9]*' <<<"$l" | cut -d= -f2)))
    dis=$((dis + $(grep -o 'out_of_order=[0-9]*' <<<"$l" | cut -d= -f2)))
    p99=$(awk -v a="$p99" -v b="$(grep -o 'p99=[0-9.]*' <<<"$l" | cut -d= -f2)" 'BEGIN { print (b > a ? b : a) }')
  done
  local fps
  fps=$(awk -v r="$received" -v s="$SECONDS_LOAD" 'BEGIN { printf "%.0f", r / s }')
  echo "$received $((inserted * n)) $lost $dup $dis $p99 $fps $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.1f", b - a }')"
}

say "A: $SINGLE idle streams, single process (--workers 1)"
A1=$(idle 1 "$SINGLE")
say "   $A1"
say "A: $STREAMS idle streams, --workers $WORKERS"
AW=$(idle "$WORKERS" "$STREAMS")
say "   $AW"
say "B: hot run, $FANOUT streams, single process"
B1=$(hot 1 "$FANOUT")
say "   $B1"
say "B: hot run, $FANOUT streams, --workers 2 (one per core)"
BW=$(hot 2 "$FANOUT")
say "   $BW"

f() { cut -d' ' -f"$1" <<<"$2"; }
echo
echo "gateway scale ($(nproc) cores, $(date +%Y-%m-%d))"
echo
echo "| idle streams | gateway | streams held | RSS before -> after (KB) | bytes per stream | open time (s) |"
echo "|---|---|---|---|---|---|"
echo "| $SINGLE | --workers 1 (baseline) | $(f 1 "$A1") | $(f 2 "$A1") -> $(f 3 "$A1") | $(f 4 "$A1") | $(f 5 "$A1") |"
echo "| $STREAMS | --workers $WORKERS | $(f 1 "$AW") | $(f 2 "$AW") -> $(f 3 "$AW") | $(f 4 "$AW") | $(f 5 "$AW") |"
echo
echo "| hot run ($FANOUT streams, 100 events/s, ${SECONDS_LOAD}s) | frames received / expected | lost | dup | out of order | p99 commit->browser (ms) | frames/s | gateway CPU (s) |"
echo "|---|---|---|---|---|---|---|---|"
echo "| --workers 1 (baseline) | $(f 1 "$B1") / $(f 2 "$B1") | $(f 3 "$B1") | $(f 4 "$B1") | $(f 5 "$B1") | $(f 6 "$B1") | $(f 7 "$B1") | $(f 8 "$B1") |"
echo "| --workers 2 | $(f 1 "$BW") / $(f 2 "$BW") | $(f 3 "$BW") | $(f 4 "$BW") | $(f 5 "$BW") | $(f 6 "$BW") | $(f 7 "$BW") | $(f 8 "$BW") |"
