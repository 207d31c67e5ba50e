#!/usr/bin/env bash
# Retention soak, run by `make soak`: SOAK_EVENTS (1,000,000) events at SOAK_RATE
# (5,000/s) over SOAK_RUNS (100) runs through one relay with --retention
# SOAK_RETENTION (30s) and --counter-retention SOAK_COUNTER_RETENTION (30s), sampling
# the table every 10 s: rows, table and index sizes, the size of the live rows
# themselves and the ratio of the two, dead tuples, backlog, run counters. With
# retention keeping up (and the relay's VACUUM, --vacuum-after), rows and sizes level
# off after the first window instead of growing with the number of events; after the
# load the counters go too. Reports run counters and Redis keys before and after, and
# the highest ratio while the load ran with a full window in the table. Starts its
# own servers (loopback only) and stops them; about 5 minutes at the defaults.
# SOAK_SEQ_TRIGGER=c runs it with the C seq trigger of pgext/ (make pgext first).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
EVENTS=${SOAK_EVENTS:-1000000}
RATE=${SOAK_RATE:-5000}
RUNS=${SOAK_RUNS:-100}
RETENTION=${SOAK_RETENTION:-30s}
COUNTERS=${SOAK_COUNTER_RETENTION:-30s}
AFTER=${SOAK_AFTER_SAMPLES:-7} # samples after the load, 10 s apart
TRIGGER=${SOAK_SEQ_TRIGGER:-plpgsql}
[[ $TRIGGER == plpgsql || $TRIGGER == c ]] || { echo "soak: SOAK_SEQ_TRIGGER must be plpgsql or c" >&2; exit 2; }
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
[[ $TRIGGER == c ]] && bash "$ROOT/scripts/pgext-load.sh" "$DATABASE_URL"
"$BUILD/outboxd" migrate --seq-trigger "$TRIGGER" >"$dir/migrate.log" 2>&1 || { cat "$dir/migrate.log" >&2; exit 1; }
q() { psql -X -qtA "$DATABASE_URL" -c "$1"; }
keys() { redis-cli -p "$REDIS_PORT" dbsize; }
echo "outboxd retention soak  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  events=$EVENTS rate=$RATE/s runs=$RUNS" \
  "retention=$RETENTION counter-retention=$COUNTERS seq-trigger=$TRIGGER (~$((EVENTS / RATE))s of load)"
echo "before: run counters $(q "SELECT count(*) FROM run_outbox_seq"), Redis keys $(keys)"
"$BUILD/outboxd" relay --retention "$RETENTION" --counter-retention "$COUNTERS" --stats-interval 10s \
  2>"$dir/relay.log" &
pids+=($!)
"$BUILD/obx_load" --rate "$RATE" --runs "$RUNS" --conns 4 --count "$EVENTS" --pad 200 --prefix soak >"$dir/load.out" &
load=$!
pids+=("$load")
# live_MB: the rows' own bytes (pg_column_size of each row, its header included);
# bloat = (table + indexes) / live.
printf '%6s %10s %9s %9s %9s %8s %7s %9s %8s %9s\n' secs inserted rows table_MB index_MB live_MB bloat dead_tup \
  backlog counters
start=$SECONDS
after=0 max_bloat=0
window_s=$(awk -v r="$RETENTION" 'BEGIN {n = r + 0; u = substr(r, length(n "") + 1);
  print n * (u == "m" ? 60 : u == "h" ? 3600 : u == "ms" ? 0.001 : 1)}')
while ((after < AFTER)); do # sample while the load runs, then AFTER more times
  sleep 10
  # inserted: the ids drawn (one per event, from 1 in this fresh database); the C
  # trigger does not keep the run counters up to date.
  row=$(q "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM run_outbox_id_seq), count(*),
             round(pg_table_size('run_outbox') / 1048576.0, 1), round(pg_indexes_size('run_outbox') / 1048576.0, 1),
             round(coalesce(sum(pg_column_size(r.*)), 0) / 1048576.0, 1),
             (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'run_outbox'),
             count(*) FILTER (WHERE published_at IS NULL), (SELECT count(*) FROM run_outbox_seq)
           FROM run_outbox r")
  IFS='|' read -r inserted rows tmb imb live dead backlog counters <<<"$row"
  bloat=$(awk -v t="$tmb" -v i="$imb" -v l="$live" 'BEGIN {if (l > 0) printf "%.2f", (t + i) / l; else print "-"}')
  printf '%6d %10d %9d %9s %9s %8s %7s %9d %8d %9d\n' $((SECONDS - start)) "$inserted" "$rows" "$tmb" "$imb" "$live" \
    "$bloat" "$dead" "$backlog" "$counters"
  # The ratio that counts: while the load runs and the table holds a full retention
  # window (before, it is filling; after, it empties and keeps its pages for reuse).
  if [[ $bloat != - ]] && kill -0 "$load" 2>/dev/null && ((SECONDS - start >= window_s + 10)); then
    max_bloat=$(awk -v a="$max_bloat" -v b="$bloat" 'BEGIN {print (b > a ? b : a)}')
  fi
  kill -0 "$load" 2>/dev/null || after=$((after + 1))
done
wait "$load" || true
echo "load: $(cat "$dir/load.out")"
echo "relay: $(grep 'stats:' "$dir/relay.log" | tail -1 | sed 's/.*stats: //')"
echo "after: run counters $(q "SELECT count(*) FROM run_outbox_seq"), Redis keys $(keys) (marks expire after --mark-ttl, 1 day)"
echo "highest (table + indexes) / live rows while the load ran and the table held a full window: ${max_bloat}x"
