#!/usr/bin/env bash
# The crash the marks exist for must not look like numbering that went back: relays
# die (failpoint) right after PUBLISH and before the marking UPDATE, and PostgreSQL
# itself crashes (stop -m immediate, synchronous_commit on) between two of them. The
# next leader meets the published-but-unmarked ids again: they are at or below the id
# sequence, so the epoch stays, no "went back" is logged, and the marks suppress the
# re-sent events; the subscriber sees every event once, in order. The high-water of
# published ids in Redis is the highest id published.
. "$(dirname "$0")/lib.sh"
new_db
prefill 3000 10 nc
epoch0=$(q "SELECT epoch FROM outboxd_meta")
start_sub sub --prefix nc --expect 3000 --idle-ms 8000 --max-seconds 90 --check
for i in 1 2 3; do
  OUTBOXD_FAILPOINT=crash-before-mark start_relay "fp$i" --max-batch-size 100
  rc=0; wait "$RELAY_PID" || rc=$?
  [[ $rc -eq 137 ]] || fail "failpoint relay exited $rc, want death by SIGKILL (137): $(tail -3 "$WORK/fp$i.log")"
  if [[ $i == 2 ]]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" restart -m immediate -w -t 30 >/dev/null || fail "postgresql did not restart"
    info "postgresql crashed (stop -m immediate) and started again"
  fi
done
info "after 3 crashes: $(q "SELECT count(*) FROM run_outbox WHERE published_at IS NOT NULL") of 3000 marked"
hport=$(pick_port)
start_relay final --http-listen "127.0.0.1:$hport"
wait_drained 30
wait_sub sub "$SUB_PID"
m=$(curl -s "http://127.0.0.1:$hport/metrics" | awk '$1 == "outboxd_epoch_changes_total" {print $2}')
[[ $m == 0 ]] || fail "outboxd_epoch_changes_total = ${m:-missing} after crashes between publish and mark (want 0)"
stop_relay "$RELAY_PID" 5
if grep -l "numbering of run_outbox went back" "$WORK"/*.log; then fail "a crash was taken for numbering that went back"; fi
[[ $(q "SELECT epoch FROM outboxd_meta") == "$epoch0" ]] || fail "the epoch changed after crashes between publish and mark"
sup=$(grep 'stats (final)' "$WORK/final.log" | grep -o 'duplicates_suppressed=[0-9]*' | cut -d= -f2)
info "duplicates suppressed by the Redis marks: $sup"
((sup > 0)) || fail "the final relay should have found the crashed batch already published"
hw=$(redis-cli -p "$REDIS_PORT" --scan --pattern "outboxd:$epoch0.*:hw*" | xargs -r redis-cli -p "$REDIS_PORT" GET)
[[ $hw == "$(q "SELECT max(id) FROM run_outbox")" ]] || fail "high-water '$hw', want the highest id $(q "SELECT max(id) FROM run_outbox")"
