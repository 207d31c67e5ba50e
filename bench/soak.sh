#!/usr/bin/env bash
# Retention soak, run by `make soak`: SOAK_EVENTS (1,000,000) events at SOAK_RATE
# (5,000/s) over 100 runs through one relay with --retention SOAK_RETENTION (30s),
# sampling the table every 10 s: rows, table and index sizes, dead tuples, backlog.
# With retention keeping up, rows and sizes level off after the first window instead
# of growing with the number of events. Starts its own servers (loopback only) and
# stops them; bounded by the event count (about 200 s at the defaults).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
EVENTS=${SOAK_EVENTS:-1000000}
RATE=${SOAK_RATE:-5000}
RETENTION=${SOAK_RETENTION:-30s}
dir=$(mktemp -d /tmp/outboxd-soak.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  bash "$ROOT/scripts/stack.sh" stop "$dir"
  rm -rf "$dir"
}
trap cleanup EXIT
bash "$ROOT/scripts/stack.sh" start "$dir" >/dev/null
. "$dir/env"
"$BUILD/outboxd" migrate >/dev/null 2>&1
"$BUILD/outboxd" relay --retention "$RETENTION" --stats-interval 10s 2>"$dir/relay.log" &
pids+=($!)
seconds=$((EVENTS / RATE))
"$BUILD/obx_load" --rate "$RATE" --runs 100 --conns 4 --count "$EVENTS" --pad 200 --prefix soak >"$dir/load.out" &
load=$!; pids+=("$load")
q() { psql -X -qtA "$DATABASE_URL" -c "$1"; }
echo "outboxd retention soak  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  events=$EVENTS rate=$RATE/s retention=$RETENTION (~${seconds}s)"
printf '%6s %10s %10s %10s %10s %10s %9s\n' secs inserted rows table_MB index_MB dead_tup backlog
start=$SECONDS
after=0
while ((after < 4)); do  # sample while the load runs, then 40 s more
  sleep 10
  row=$(q "SELECT (SELECT coalesce(sum(last_seq), 0) FROM run_outbox_seq), count(*),
             round(pg_table_size('run_outbox') / 1048576.0, 1), round(pg_indexes_size('run_outbox') / 1048576.0, 1),
             (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'run_outbox'),
             count(*) FILTER (WHERE published_at IS NULL) FROM run_outbox")
  IFS='|' read -r inserted rows tmb imb dead backlog <<<"$row"
  printf '%6d %10d %10d %10s %10s %10d %9d\n' $((SECONDS - start)) "$inserted" "$rows" "$tmb" "$imb" "$dead" "$backlog"
  kill -0 "$load" 2>/dev/null || after=$((after + 1))
done
wait "$load" || true
echo "load: $(cat "$dir/load.out")"
echo "relay: $(grep 'stats:' "$dir/relay.log" | tail -1 | sed 's/.*stats: //')"
