#!/usr/bin/env bash
# PostgreSQL faults while the relay drains: its backend terminated twice, then the
# server restarted. The relay reconnects, and every event arrives once, in order.
# Then its backend is terminated while it waits inside the marking UPDATE (a row it
# marks is locked by another transaction): the published events are re-checked and
# suppressed, not delivered twice.
. "$(dirname "$0")/lib.sh"
new_db
prefill 150000 40 pgf
start_sub sub --prefix pgf --expect 150000 --max-seconds 120 --check
start_relay relay --max-batch-size 500
wait_log "$WORK/relay.log" "leader:" 10
for i in 1 2; do
  sleep 0.2
  n=$(q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay-%'")
  info "terminated $n relay backend(s)"
done
sleep 0.3
left=$(q "SELECT count(*) FROM run_outbox WHERE published_at IS NULL")
((left > 0)) || fail "the backlog was drained before the faults: make it larger"
pg_restart
info "postgresql restarted with $left events unpublished"
wait_drained 60
wait_sub sub "$SUB_PID"
(( $(grep -c "postgresql: connected" "$WORK/relay.log") >= 2 )) || fail "the relay never reconnected?"
stop_relay "$RELAY_PID" 5

start_sub mk --prefix mk --expect 10 --max-seconds 60 --check
q "INSERT INTO run_outbox (run_id, payload) SELECT 'mk-1', jsonb_build_object('g', g) FROM generate_series(1, 10) g"
# The row stays locked until the holder's backend is ended below (a fixed hold would
# have to outlast a slow relay's start).
PGAPPNAME=t10-holder psql -X -q "$DATABASE_URL" -c "BEGIN; SELECT 1 FROM run_outbox WHERE run_id = 'mk-1' AND seq = 10 FOR UPDATE; SELECT pg_sleep(60); COMMIT;" >/dev/null 2>&1 &
holder=$!; PIDS+=("$holder")
wait_sleeping t10-holder
start_relay mark
for _ in $(seq 1 200); do
  n=$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay-%' AND wait_event_type = 'Lock'")
  [[ $n -ge 1 ]] && break
  sleep 0.05
done
[[ $n -ge 1 ]] || fail "the relay never waited in its marking UPDATE"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay-%' AND wait_event_type = 'Lock'" >/dev/null
info "terminated the relay's backend inside the marking UPDATE"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 't10-holder'" >/dev/null
wait "$holder" || true
wait_drained 20
wait_sub mk "$SUB_PID"
stop_relay "$RELAY_PID" 5
sup=$(grep 'stats (final)' "$WORK/mark.log" | grep -o 'duplicates_suppressed=[0-9]*' | cut -d= -f2)
((sup >= 10)) || fail "want the 10 re-fetched events suppressed as duplicates, got $sup"
