#!/usr/bin/env bash
# SIGTERM in the middle of draining a backlog, three times: each relay finishes its
# batch and exits 0; the next one publishes the rest; no event lost or repeated.
. "$(dirname "$0")/lib.sh"
new_db
prefill 60000 50 term
start_sub sub --prefix term --expect 60000 --max-seconds 120 --check
for i in 1 2 3; do
  start_relay "relay$i"
  wait_log "$WORK/relay$i.log" "leader:" 10
  sleep 0.$((RANDOM % 3 + 1))
  stop_relay "$RELAY_PID" 5
  info "after stop $i: $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NOT NULL") of 60000 published"
done
start_relay final
wait_drained 60
wait_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5
