#!/usr/bin/env bash
# Crashes under load (1,000 events/s over 50 runs): 17 relays are kill -9'd at random
# moments, then three die (failpoint) right after PUBLISH and before the marking
# UPDATE. The marks in Redis turn the published-but-unmarked events into suppressed
# duplicates: the subscriber sees every event exactly once, in order.
. "$(dirname "$0")/lib.sh"
new_db
prefill 10000 50 kill
start_sub sub --prefix kill --idle-ms 5000 --max-seconds 120 --check
start_load --rate 1000 --runs 50 --conns 4 --seconds 12 --prefix kill
for i in $(seq 1 17); do
  start_relay "relay$i" --max-batch-size 200
  wait_log "$WORK/relay$i.log" "leader:" 10
  sleep "0.$((RANDOM % 3 + 1))"
  kill -9 "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
done
for i in 1 2 3; do
  OUTBOXD_FAILPOINT=crash-before-mark start_relay "fp$i" --max-batch-size 200
  rc=0; wait "$RELAY_PID" || rc=$?
  [[ $rc -eq 137 ]] || fail "failpoint relay exited $rc, want death by SIGKILL (137)"
done
info "after 20 crashes: $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NOT NULL") of $(q "SELECT count(*) FROM run_outbox") marked"
start_relay final
wait "$LOAD_PID"
wait_drained 60
finish_sub sub "$SUB_PID"
stop_relay "$RELAY_PID" 5
# The last crash left a published but unmarked batch: the final relay met it again
# and the marks kept it from going out twice.
sup=$(grep 'stats (final)' "$WORK/final.log" | grep -o 'duplicates_suppressed=[0-9]*' | cut -d= -f2)
info "duplicates suppressed by the Redis marks: $sup"
((sup > 0)) || fail "the final relay should have found the crashed batch already published"
