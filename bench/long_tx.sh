#!/usr/bin/env bash
# Long transactions that do not write the outbox, beside the relay (docs/SCHEMA.md,
# "How the relay finds new events"). For a baseline build (BASELINE_REF, v0.1.0 by
# default; scripts/baseline.sh) and this tree, one after the other on one throw-away
# PostgreSQL + Redis (scripts/stack.sh, loopback only), each with a database of its
# own: a transaction with an id stays open in another database and a prepared one on
# another table of the test database (both hold the snapshot xmin back) while
# obx_load writes LONGTX_RATE events/s for LONGTX_SECONDS with 5 % of the inserts
# rolled back. Prints per version: commit->subscriber latency (obx_sub --check:
# nothing lost, repeated or reordered), the re-sends the Redis marks stopped, the gaps
# left open at the end, and the statements/s of the idle relay afterwards.
# Environment: BASELINE_REF (v0.1.0), LONGTX_RATE (1000), LONGTX_SECONDS (30),
# BUILD (build).
set -Eeuo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
RATE=${LONGTX_RATE:-1000}
SECS=${LONGTX_SECONDS:-30}
REF=${BASELINE_REF:-v0.1.0}
WORK=$(mktemp -d /tmp/outboxd-longtx.XXXXXX)
chmod 755 "$WORK"
PIDS=()
GIDS=()
finish() {
  local p g
  # A prepared transaction outlives its session: never leave one behind.
  for g in "${GIDS[@]}"; do psql -X -q "${g%% *}" -c "ROLLBACK PREPARED '${g#* }'" >/dev/null 2>&1 || true; done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  bash scripts/stack.sh stop "$WORK/stack"
  rm -rf "$WORK"
}
trap finish EXIT
say() { echo "[longtx] $*" >&2; }

say "building $REF (scripts/baseline.sh)"
BASE_BUILD=$(bash scripts/baseline.sh "$REF" 2>"$WORK/baseline.log") || { tail -5 "$WORK/baseline.log"; exit 1; }
bash scripts/stack.sh start "$WORK/stack" >/dev/null
. "$WORK/stack/env"
BASE_URL="postgresql://postgres@127.0.0.1:$PGPORT"

# measure LABEL BUILD_DIR
measure() {
  local label=$1 b=$2 db="longtx_$1" gid="longtx_$1_$$" rp sp lp
  psql -X -q "$BASE_URL/postgres" -c "CREATE DATABASE $db"
  local url="$BASE_URL/$db"
  DATABASE_URL=$url "$b/outboxd" migrate >/dev/null 2>&1
  psql -X -q "$url" -c "CREATE TABLE other (x int)" -c "BEGIN" -c "INSERT INTO other VALUES (1)" \
    -c "PREPARE TRANSACTION '$gid'" >/dev/null
  GIDS+=("$url $gid")
  psql -X -q "$BASE_URL/postgres" -c "BEGIN" -c "SELECT pg_current_xact_id()" -c "SELECT pg_sleep(100000)" \
    >/dev/null 2>&1 &
  lp=$!
  PIDS+=("$lp")
  DATABASE_URL=$url "$b/outboxd" relay --stats-interval 1s >"$WORK/$label.relay.log" 2>&1 &
  rp=$!
  PIDS+=("$rp")
  sleep 1
  DATABASE_URL=$url "$b/obx_sub" --port "$REDIS_PORT" --prefix "lt$label" --idle-ms 8000 --max-seconds 900 \
    --check >"$WORK/$label.sub" 2>&1 &
  sp=$!
  PIDS+=("$sp")
  sleep 0.5
  DATABASE_URL=$url "$b/obx_load" --rate "$RATE" --runs 50 --conns 4 --seconds "$SECS" --rollback-pct 5 \
    --prefix "lt$label" >"$WORK/$label.load"
  wait "$sp" || true
  local x0 x1
  sleep 2
  x0=$(psql -X -qtA "$url" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
  sleep 5
  x1=$(psql -X -qtA "$url" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
  kill -TERM "$rp"
  wait "$rp" || true
  kill "$lp" 2>/dev/null || true
  psql -X -q "$url" -c "ROLLBACK PREPARED '$gid'" >/dev/null
  local final
  final=$(grep 'stats (final)' "$WORK/$label.relay.log")
  printf '%-9s %s\n          %s\n          relay: %s gaps_at_end=%s idle_statements_per_s=%s\n' "$label" \
    "$(cat "$WORK/$label.load")" "$(tail -1 "$WORK/$label.sub")" \
    "$(echo "$final" | grep -o 'published=[0-9]*\|duplicates_suppressed=[0-9]*' | tr '\n' ' ')" \
    "$(echo "$final" | grep -o 'gaps=[0-9]*' | cut -d= -f2)" "$(((x1 - x0) / 5))"
}

echo "long transactions beside the relay: $RATE events/s for $SECS s, 5 % rolled back ($(nproc) cores)"
measure baseline "$BASE_BUILD"
measure this "$BUILD"
