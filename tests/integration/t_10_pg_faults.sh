#!/usr/bin/env bash
# PostgreSQL faults while the relay drains: its backend terminated twice, then the
# server restarted. The relay reconnects, and every event arrives once, in order.
. "$(dirname "$0")/lib.sh"
new_db
prefill 40000 40 pgf
start_sub sub --prefix pgf --expect 40000 --max-seconds 120 --check
start_relay relay --max-batch-size 500
wait_log "$WORK/relay.log" "leader:" 10
for i in 1 2; do
  sleep 0.2
  n=$(q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'outboxd-relay-%'")
  info "terminated $n relay backend(s)"
done
sleep 0.3
pg_restart
info "postgresql restarted"
wait_drained 60
wait_sub sub "$SUB_PID"
(( $(grep -c "postgresql: connected" "$WORK/relay.log") >= 2 )) || fail "the relay never reconnected?"
stop_relay "$RELAY_PID" 5
