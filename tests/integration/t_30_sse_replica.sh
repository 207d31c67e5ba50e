#!/usr/bin/env bash
# Replays from a streaming standby (--replica-url) that falls behind: a standby made
# with pg_basebackup -R has its replay paused for 3 s during 1,000 events/s over 5
# runs. Streams that were open all along, and streams that open during the pause and
# replay every run from seq 0, each get every event once, in order: a read the standby
# cannot serve yet goes to the primary. The gateway's counters show reads served by
# the standby and reads that fell back to the primary.
. "$(dirname "$0")/lib.sh"
new_db

sdir="$WORK/standby"
mkdir -p "$sdir"
[[ $(id -u) -eq 0 ]] && chown postgres: "$sdir" "$WORK"
chmod 700 "$sdir"
sport=$(pick_port)
standby_stop() { as_pg "$PGBIN/pg_ctl" -D "$sdir" -m immediate -w -t 10 stop >/dev/null 2>&1 || true; }
trap 'standby_stop; cleanup' EXIT
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PGPORT" -U postgres -D "$sdir" -R -X stream -c fast \
  >"$WORK/basebackup.log" 2>&1 || fail "pg_basebackup: $(cat "$WORK/basebackup.log")"
as_pg "$PGBIN/pg_ctl" -D "$sdir" -l "$WORK/standby.log" -w -t 30 \
  -o "-p $sport -c listen_addresses=127.0.0.1 -k $sdir -c hot_standby=on -c max_connections=300 -c max_prepared_transactions=16 -c fsync=off" start >/dev/null ||
  fail "standby did not start: $(tail -5 "$WORK/standby.log")"
REPLICA_URL="postgresql://postgres@127.0.0.1:$sport/${DATABASE_URL##*/}"
[[ $(psql -X -qtA "$REPLICA_URL" -c "SELECT pg_is_in_recovery()") == t ]] || fail "the standby is not in recovery"
sq() { psql -X -qtA "$REPLICA_URL" -c "$1"; }

start_relay relay
start_sse sse --replica-url "$REPLICA_URL"
wait_log "$WORK/sse.log" "(gateway, replica): connected" 10

"$BUILD/obx_sse" --port "$SSE_PORT" --prefix rep --runs 5 --per-run 1 --cut-after 300 --cut-ms 500 \
  --idle-ms 3000 --max-seconds 60 --ready-file "$WORK/live.ready" --check >"$WORK/live.out" 2>"$WORK/live.err" &
live=$!; PIDS+=("$live")
for _ in $(seq 1 100); do [[ -f "$WORK/live.ready" ]] && break; sleep 0.05; done
start_load --rate 1000 --runs 5 --conns 8 --seconds 9 --prefix rep
sleep 2
sq "SELECT pg_wal_replay_pause()" >/dev/null
info "standby replay paused at $(sq "SELECT pg_last_wal_replay_lsn()")"
sleep 1
"$BUILD/obx_sse" --port "$SSE_PORT" --prefix rep --runs 5 --per-run 1 --from 0 \
  --idle-ms 3000 --max-seconds 60 --ready-file "$WORK/late.ready" --check >"$WORK/late.out" 2>"$WORK/late.err" &
late=$!; PIDS+=("$late")
sleep 2
behind=$(q "SELECT count(*) FROM run_outbox") standby_has=$(sq "SELECT count(*) FROM run_outbox")
info "during the pause: primary has $behind events, the standby $standby_has"
((standby_has < behind)) || fail "the standby was not behind during the pause"
sq "SELECT pg_wal_replay_resume()" >/dev/null
info "standby replay resumed"
wait "$LOAD_PID" || fail "load generator failed"
info "$(cat "$WORK/load.out")"
tell_drained 30 "$live" "$late"
for name in live late; do
  pid=$live; [[ $name == late ]] && pid=$late
  rc=0; wait "$pid" || rc=$?
  info "$name streams: $(cat "$WORK/$name.out")"
  [[ $rc -eq 0 ]] || fail "$name streams: $(cat "$WORK/$name.out") $(head -3 "$WORK/$name.err")"
done
metrics=$(curl -s "http://127.0.0.1:$SSE_PORT/metrics")
from_standby=$(echo "$metrics" | awk '/^outboxd_sse_replica_replays_total/ {print $2}')
fallbacks=$(echo "$metrics" | awk '/^outboxd_sse_replica_fallbacks_total/ {print $2}')
info "reads served by the standby: $from_standby; sent to the primary while it was behind: $fallbacks"
[[ ${from_standby%.*} -gt 0 ]] || fail "no read was served by the standby"
[[ ${fallbacks%.*} -gt 0 ]] || fail "no read fell back to the primary while the standby was paused"
kill -TERM "$SSE_PID"; wait "$SSE_PID" || fail "gateway exit code"
no_sanitizer_reports
stop_relay "$RELAY_PID" 5
